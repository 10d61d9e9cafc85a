"""The JSON Schemas of the public topics (docs/schemas/) are valid, and so are the examples in
docs/mqtt-topics.md and the documents dagon's own encoders build."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dagon.core import AgentView
from dagon.core._agentstatus import agent_status_doc
from dagon.protocol import (
    SCHEMA_AGENT_STATUS,
    SCHEMA_COORDINATOR,
    SCHEMA_EVENTS,
    SCHEMA_READING,
    SCHEMA_RUN_STATUS,
    SCHEMA_TASK_RESULT,
    SCHEMA_TELEMETRY,
)

DOCS = Path(__file__).parents[2] / "docs"
FILES = {
    SCHEMA_RUN_STATUS: "run-status.json",
    SCHEMA_TASK_RESULT: "task-result.json",
    SCHEMA_EVENTS: "events.json",
    SCHEMA_TELEMETRY: "telemetry.json",
    SCHEMA_COORDINATOR: "coordinator.json",
    SCHEMA_READING: "reading.json",
    SCHEMA_AGENT_STATUS: "agent-status.json",
}


def schema(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DOCS / "schemas" / FILES[name]).read_text())
    return doc


@pytest.mark.parametrize("name", sorted(FILES))
def test_schema_files_are_valid_draft_2020_12_and_named_like_the_documents(name: str) -> None:
    doc = schema(name)
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc["$id"] == name and doc["properties"]["schema"] == {"const": name}
    assert f"schemas/{FILES[name]}" in (DOCS / "mqtt-topics.md").read_text()


def examples() -> list[dict[str, Any]]:
    text = (DOCS / "mqtt-topics.md").read_text()
    found = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, flags=re.S)]
    inline = re.search(r"`(\{\"schema\": \"dagon\.coordinator/1\".*?\})`", text)
    assert inline is not None
    found.append(json.loads(inline.group(1)))
    return [doc for doc in found if isinstance(doc, dict) and "schema" in doc]


def test_every_documented_example_is_valid() -> None:
    docs = examples()
    assert {d["schema"] for d in docs} == set(FILES)
    for doc in docs:
        jsonschema.Draft202012Validator(schema(doc["schema"])).validate(doc)


@pytest.mark.parametrize(
    ("name", "doc"),
    [
        (SCHEMA_RUN_STATUS, {"schema": SCHEMA_RUN_STATUS, "run": "r", "state": "exploded", "cause": ""}),
        (SCHEMA_RUN_STATUS, {"schema": SCHEMA_RUN_STATUS, "run": "r", "state": "running", "cause": ""}),
        (SCHEMA_TASK_RESULT, {"schema": SCHEMA_TASK_RESULT, "run": "r", "task": "t"}),
        (SCHEMA_EVENTS, {"schema": SCHEMA_EVENTS, "run": "r", "events": [{"type": "run", "task": "t"}]}),
        (SCHEMA_TELEMETRY, {"schema": SCHEMA_TELEMETRY, "agent": "a", "cpu_percent": 140}),
        (SCHEMA_COORDINATOR, {"schema": SCHEMA_COORDINATOR, "id": "main", "online": "yes"}),
        (SCHEMA_AGENT_STATUS, {"schema": SCHEMA_AGENT_STATUS, "coordinator": "main", "agent": "a", "online": True}),
    ],
)
def test_schemas_reject_wrong_documents(name: str, doc: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema(name)).validate(doc)


def test_a_rejected_run_status_needs_only_the_reason() -> None:
    doc = {"schema": SCHEMA_RUN_STATUS, "run": "bad-run", "state": "rejected", "cause": "unknown task 'ghost'"}
    jsonschema.Draft202012Validator(schema(SCHEMA_RUN_STATUS)).validate(doc)


def test_the_agent_status_the_coordinator_builds_is_valid() -> None:
    from dagon.protocol import AgentId, Capabilities

    caps = Capabilities(
        hostname="pi", host_id="h", arch="aarch64", os="Linux", cpus=4, memory=8 << 30, runtimes=("process",),
        labels={"site": "lab"}, slots=2, version="1",
    )  # fmt: skip
    view = AgentView(AgentId("pi-1"), caps)
    view.online, view.last_seen = True, 1795658581.4
    doc = agent_status_doc(view, coordinator="main", reason="announced", key=bytes(32))
    jsonschema.Draft202012Validator(schema(SCHEMA_AGENT_STATUS)).validate(doc)
    assert (doc["free_slots"], doc["admitted"], doc["fingerprint"].startswith("SHA256:")) == (2, True, True)
