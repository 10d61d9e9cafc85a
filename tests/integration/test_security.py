"""Message authentication end to end over a real Mosquitto: what an intruder on the broker cannot do."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from _keys import COORDINATOR, coordinator_security

import dagon
from dagon.agent import Agent
from dagon.core import Coordinator, RunState, RunStore
from dagon.protocol import (
    AgentId,
    Codec,
    ResultStatus,
    RunId,
    Signer,
    TaskName,
    TaskResult,
    TasksFinished,
    topics,
)
from dagon.protocol.transport import MqttTransport

from ._stack import mqtt_agent

pytestmark = pytest.mark.mosquitto

STRANGER = Signer.generate()


async def until(counts: Counter[str], reason: str, n: int = 1, within: float = 10) -> None:
    async with asyncio.timeout(within):
        while counts[reason] < n:
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def secured_stack(url: str, tmp: Path) -> AsyncIterator[tuple[Coordinator, Agent, list[bytes]]]:
    """A signing coordinator, one agent, and a sniffer keeping every task message it sees on the broker."""
    captured: list[bytes] = []
    coordinator = Coordinator(
        connect=lambda will: MqttTransport(url, client_id="coordinator", will=will),
        coordinator_id="main",
        **coordinator_security(),
    )
    async with (
        coordinator,
        mqtt_agent(url, tmp, "edge") as agent,
        MqttTransport(url, client_id="sniffer") as sniffer,
    ):
        await sniffer.subscribe(topics.agent_tasks("edge"))

        async def sniff() -> None:
            async for msg in sniffer.messages():
                captured.append(msg.payload)

        sniffing = asyncio.create_task(sniff())
        try:
            await coordinator.wait_for_agents(1)
            yield coordinator, agent, captured
        finally:
            sniffing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sniffing


async def test_replayed_tampered_unsigned_and_foreign_tasks_never_run(mosquitto: Any, tmp_path: Path) -> None:
    markers = tmp_path / "markers.txt"
    wf = dagon.Workflow("guarded")
    wf.shell("mark", f"echo ran >> {markers}")
    async with secured_stack(mosquitto.url, tmp_path) as (coordinator, agent, captured):
        result = await coordinator.wait(await coordinator.submit(wf))
        assert result.state is RunState.SUCCEEDED
        assert markers.read_text() == "ran\n"
        (assign,) = captured
        kid, signature, body = msgpack.unpackb(assign)
        async with MqttTransport(mosquitto.url, client_id="intruder") as intruder:
            tasks_topic = topics.agent_tasks("edge")
            # 1. the captured message, replayed as is
            await intruder.publish(tasks_topic, assign)
            await until(agent.rejections, "replayed")
            # 2. one byte of the command changed, signature kept
            tampered = body.replace(b"echo ran", b"echo rAn")
            assert tampered != body
            await intruder.publish(tasks_topic, msgpack.packb([kid, signature, tampered]))
            await until(agent.rejections, "forged")
            # 3. a fresh message: unsigned, then signed by a key the agent does not trust
            fresh = msgpack.unpackb(body)
            fresh.update(id="f" * 16, ts=time.time())
            fresh["tasks"][0]["run"] = "intruder-run"
            fresh_body = msgpack.packb(fresh)
            await intruder.publish(tasks_topic, fresh_body)
            await until(agent.rejections, "unsigned")
            await intruder.publish(tasks_topic, msgpack.packb([STRANGER.key_id, STRANGER.sign(fresh_body), fresh_body]))
            await until(agent.rejections, "untrusted")
            # 4. the trusted key id with a stranger's signature, and a correctly signed but stale message
            await intruder.publish(tasks_topic, msgpack.packb([kid, STRANGER.sign(fresh_body), fresh_body]))
            await until(agent.rejections, "forged", 2)
            stale = msgpack.packb({**fresh, "id": "e" * 16, "ts": time.time() - 3600})
            await intruder.publish(tasks_topic, msgpack.packb([kid, COORDINATOR.sign(stale), stale]))
            await until(agent.rejections, "expired")
        # the agent still works for its real coordinator
        again = await coordinator.wait(await coordinator.submit(wf))
        assert again.state is RunState.SUCCEEDED
    assert markers.read_text() == "ran\nran\n"  # exactly the two genuine runs


async def test_forged_results_are_rejected_by_the_coordinator(mosquitto: Any, tmp_path: Path) -> None:
    markers = tmp_path / "markers.txt"
    wf = dagon.Workflow("slow")
    wf.shell("wait", f"sleep 1.5; echo ran >> {markers}")
    async with secured_stack(mosquitto.url, tmp_path) as (coordinator, _agent, _):
        run = await coordinator.submit(wf)
        await asyncio.sleep(0.5)  # dispatched and running
        now = time.time()
        fake = TaskResult(
            run=RunId(run), task=TaskName("wait"), attempt=1, status=ResultStatus.FAILED, exit_code=99,
            started_at=now, finished_at=now, stderr_tail="forged",
        )  # fmt: skip
        message = TasksFinished(agent=AgentId("edge"), results=(fake,))
        async with MqttTransport(mosquitto.url, client_id="forger") as forger:
            inbox = topics.coordinator_inbox("main")
            # signed by a key that is not edge's pinned key, though sent in edge's name
            await forger.publish(inbox, Codec(sender="agent/edge", signer=STRANGER).encode(message))
            # unsigned
            await forger.publish(inbox, Codec(sender="agent/edge").encode(message))
            await until(coordinator.rejections, "untrusted")
            await until(coordinator.rejections, "unsigned")
        result = await coordinator.wait(run)
    assert result.state is RunState.SUCCEEDED
    assert result["wait"].exit_code == 0
    assert markers.read_text() == "ran\n"


async def test_a_secret_reaches_the_task_and_nothing_else(
    mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    value = "s3cr3t-" + os.urandom(8).hex()
    monkeypatch.setenv("DAGON_SECRET_API_TOKEN", value)
    caplog.set_level(logging.DEBUG)
    wf = dagon.Workflow("secretive")
    wf.shell(
        "use",
        'echo "$TOKEN" > env.txt; echo "secret://API_TOKEN" > cmd.txt; echo "leaked secret://API_TOKEN" >&2; exit 3',
        env={"TOKEN": "Bearer secret://API_TOKEN"},
    )
    wf.shell("missing", "echo secret://NOT_THERE")
    traffic: list[bytes] = []
    store = RunStore(tmp_path / "runs.sqlite")
    coordinator = Coordinator(
        connect=lambda will: MqttTransport(mosquitto.url, client_id="coordinator", will=will),
        coordinator_id="main",
        store=store,
        **coordinator_security(),
    )
    try:
        async with (
            MqttTransport(mosquitto.url, client_id="wiretap") as wiretap,
            coordinator,
            mqtt_agent(mosquitto.url, tmp_path, "vault"),
        ):
            await wiretap.subscribe("#")

            async def tap() -> None:
                async for msg in wiretap.messages():
                    traffic.append(msg.topic.encode() + b" " + msg.payload)

            tapping = asyncio.create_task(tap())
            await coordinator.wait_for_agents(1)
            result = await coordinator.wait(await coordinator.submit(wf))
            await asyncio.sleep(0.3)  # let the last public messages reach the tap
            tapping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tapping
    finally:
        store.close()
    use = result["use"]
    workdir = Path(use.workdir)
    assert (workdir / "env.txt").read_text() == f"Bearer {value}\n"  # resolved on the agent
    assert (workdir / "cmd.txt").read_text() == f"{value}\n"
    assert use.exit_code == 3 and "leaked ***" in use.stderr_tail and value not in use.stderr_tail
    assert "secret://API_TOKEN" in (workdir / ".dagon" / "command").read_text()  # the record keeps the placeholder
    assert "NOT_THERE" in result["missing"].cause and "DAGON_SECRET_NOT_THERE" in result["missing"].cause
    assert any(b"secret://API_TOKEN" in t for t in traffic)  # the placeholder travelled, and was seen
    secret = value.encode()
    assert not [t[:80] for t in traffic if secret in t]
    assert value not in caplog.text
    for path in tmp_path.glob("runs.sqlite*"):  # noqa: ASYNC240 - the run is over
        assert secret not in path.read_bytes(), path
