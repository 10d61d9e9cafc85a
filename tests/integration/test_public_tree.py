"""One subscription, ``dagon/v1/#``, is every public JSON document of a real run and nothing binary;
the signed msgpack protocol travels under ``dagon/wire/v1/``. Real Mosquitto, a real ``dagon-agent``
process, real ``mosquitto_sub`` processes."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from _broker import missing, stop_process

import dagon
from dagon._keys import agent_signer
from dagon.protocol import SCHEMA_AGENT_STATUS, fingerprint, raw_public_key, topics

from ._stack import start_agent, taskflow

pytestmark = pytest.mark.mosquitto

SCHEMAS = Path(__file__).parents[2] / "docs" / "schemas"


def mosquitto_sub(port: int, filter_: str, out: Path) -> subprocess.Popen[bytes]:
    """``retained|content type|topic|payload as hex`` per line: a binary payload cannot break the lines."""
    binary = shutil.which("mosquitto_sub")
    if binary is None:
        missing("mosquitto_sub not installed (apt mosquitto-clients); run .ci/setup")
    with out.open("wb") as sink:
        return subprocess.Popen(
            [binary, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-t", filter_, "-F", "%r|%C|%t|%x"],
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip


def lines(path: Path) -> list[tuple[bool, str, str, bytes]]:
    found = []
    for line in path.read_text().splitlines():
        retained, content_type, topic, payload = line.split("|", 3)
        found.append((retained == "1", content_type, topic, bytes.fromhex(payload)))
    return found


def idle(path: Path, topic: str) -> bool:
    """Whether the latest document on ``topic`` shows no slot in use."""
    try:
        docs = [json.loads(payload) for _, _, t, payload in lines(path) if t == topic and payload]
    except ValueError:  # a line mosquitto_sub is still writing
        return False
    return bool(docs) and docs[-1]["free_slots"] == docs[-1]["slots"]


async def wait_for(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
def edge0(mosquitto: Any, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_agent(
        mosquitto.url, tmp_path, "edge0", slots=3, args=["--labels", "site=lab"],
        env={"DAGON_TELEMETRY_INTERVAL": "0.3", "DAGON_POWER_SOURCE": "model"},
    )  # fmt: skip
    try:
        yield proc
    finally:
        stop_process(proc)


async def test_dagon_v1_is_every_public_document_and_nothing_binary(
    mosquitto: Any, edge0: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    public_out, wire_out = tmp_path / "public.txt", tmp_path / "wire.txt"
    public = mosquitto_sub(mosquitto.port, "dagon/v1/#", public_out)
    wire = mosquitto_sub(mosquitto.port, "dagon/wire/v1/#", wire_out)
    try:
        # The agent's telemetry on the public tree: both subscriptions are live.
        await wait_for(lambda: "telemetry/json" in public_out.read_text(), 20, "the agent's JSON telemetry")
        async with dagon.connect(mosquitto.url, home=tmp_path / "client") as client:
            assert client.coordinator is not None
            coordinator = client.coordinator.id
            run = await client.submit(taskflow())
            result = await run.wait()
            assert result.ok, result.cause
            status_topic = topics.coordinator_agent(coordinator, "edge0")
            # the run is over: the agent's document says so (changes go out at most once a second)
            await wait_for(lambda: idle(public_out, status_topic), 10, "the agent status document, nothing in flight")
        # The coordinator stopped: it removed its agent documents (zero-length retained messages).
        await wait_for(
            lambda: (status_topic, b"") in [m[2:] for m in lines(public_out)], 10, "the agent document's removal"
        )
    finally:
        stop_process(public)
        stop_process(wire)

    received = lines(public_out)
    kinds: dict[str, list[dict[str, Any]]] = {}
    for _retained, content_type, topic, payload in received:
        if not payload:  # MQTT's removal of a retained document, nothing else
            assert topic.startswith(f"dagon/v1/coordinator/{coordinator}/agents/"), topic
            continue
        doc = json.loads(payload)  # every payload is JSON: nothing binary on dagon/v1/#
        assert isinstance(doc, dict) and content_type == "application/json", topic
        kinds.setdefault(doc["schema"], []).append(doc)
    assert {"dagon.run-status/1", "dagon.events/1", "dagon.task-result/1", "dagon.telemetry/1",
            "dagon.coordinator/1", SCHEMA_AGENT_STATUS} <= set(kinds)  # fmt: skip

    validator = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "agent-status.json").read_text()))
    statuses = kinds[SCHEMA_AGENT_STATUS]
    for doc in statuses:
        validator.validate(doc)
    first = statuses[0]
    key = raw_public_key(agent_signer(tmp_path / "edge0").public_key)
    assert (first["agent"], first["coordinator"], first["admitted"], first["online"]) == (
        "edge0", coordinator, True, True,
    )  # fmt: skip
    assert {"process", "python"} <= set(first["runtimes"]) and first["labels"] == {"site": "lab"}
    assert first["slots"] == 3 and 0 <= first["free_slots"] <= 3 and first["last_seen"] > 0
    assert first["fingerprint"] == fingerprint(key)
    assert statuses[-1]["free_slots"] == 3  # the run is over: nothing in flight

    # The same run's signed protocol went over the other tree, and none of it is JSON.
    wire_msgs = lines(wire_out)
    assert any(t == topics.agent_tasks("edge0") for _, _, t, _ in wire_msgs)
    assert any(t == topics.coordinator_inbox(coordinator) for _, _, t, _ in wire_msgs)
    for _, _, topic, payload in wire_msgs:
        assert topic.startswith("dagon/wire/v1/")
        with pytest.raises(ValueError, match=r"codec can't decode|Expecting value|Extra data|Invalid"):
            json.loads(payload)
