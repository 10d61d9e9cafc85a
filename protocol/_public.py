"""JSON encoding for the public topics (run status, task results, events).

Public messages are plain JSON objects with a ``schema`` field naming their
schema and version (``dagon.run-status/1``, ``dagon.task-result/1``,
``dagon.events/1``), published with MQTT 5 content type ``application/json`` so
any MQTT client can consume them. The schemas are documented in
``docs/mqtt-topics.md``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from dagon.protocol._errors import ProtocolError

__all__ = [
    "CONTENT_TYPE_JSON",
    "SCHEMA_AGENT_STATUS",
    "SCHEMA_COORDINATOR",
    "SCHEMA_EVENTS",
    "SCHEMA_READING",
    "SCHEMA_RUN_STATUS",
    "SCHEMA_TASK_RESULT",
    "SCHEMA_TELEMETRY",
    "decode_public",
    "encode_public",
]

CONTENT_TYPE_JSON: Final = "application/json"
SCHEMA_RUN_STATUS: Final = "dagon.run-status/1"
SCHEMA_TASK_RESULT: Final = "dagon.task-result/1"
SCHEMA_EVENTS: Final = "dagon.events/1"
SCHEMA_COORDINATOR: Final = "dagon.coordinator/1"
SCHEMA_AGENT_STATUS: Final = "dagon.agent-status/1"
SCHEMA_TELEMETRY: Final = "dagon.telemetry/1"
SCHEMA_READING: Final = "dagon.reading/1"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def encode_public(doc: dict[str, Any]) -> bytes:
    """Strict JSON (NaN and infinities become null: JavaScript consumers reject them)."""
    if "schema" not in doc:
        raise ValueError("public documents carry a 'schema' field")
    try:
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(doc), separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False)
    return text.encode()


def decode_public(payload: bytes, *, schema: str | None = None) -> dict[str, Any]:
    """Parse a public JSON document, checking its schema name when given."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: deep nesting
        raise ProtocolError(f"not a JSON document: {exc}", reason="malformed") from exc
    if not isinstance(doc, dict):
        raise ProtocolError(f"expected a JSON object, got {type(doc).__name__}", reason="malformed")
    if schema is not None and doc.get("schema") != schema:
        raise ProtocolError(f"expected schema {schema!r}, got {doc.get('schema')!r}", reason="schema")
    return doc
