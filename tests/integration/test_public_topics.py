"""The public JSON topics of a real run, read by real ``mosquitto_sub`` processes and by
``dagon watch`` (a subprocess), validated against the JSON Schemas in docs/schemas/."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from _broker import missing, stop_process

import dagon
from dagon.core import RunState
from dagon.protocol import topics

from ._stack import start_agent, taskflow

pytestmark = pytest.mark.mosquitto

SCHEMAS = Path(__file__).parents[2] / "docs" / "schemas"
TELEMETRY_ENV = {"DAGON_TELEMETRY_INTERVAL": "0.3", "DAGON_POWER_SOURCE": "model"}


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def schema_for(topic: str) -> str:
    levels = topic.split("/")
    if levels[2] == "agents" and levels[-2:] == ["telemetry", "json"]:
        return "telemetry"
    if levels[2] == "coordinator" and levels[-1] == "status":
        return "coordinator"
    return {"status": "run-status", "events": "events", "tasks": "task-result"}[levels[4]]


def mosquitto_sub() -> str:
    binary = shutil.which("mosquitto_sub")
    if binary is None:
        missing("mosquitto_sub not installed (apt mosquitto-clients); run .ci/setup")
    return binary


@contextlib.asynccontextmanager
async def subscriber(port: int, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``mosquitto_sub`` printing ``retained|content-type|topic|payload`` lines; stopped by PID."""
    proc = await asyncio.create_subprocess_exec(
        mosquitto_sub(), "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-F", "%r|%C|%t|%p", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


def parse(line: bytes) -> tuple[bool, str, str, dict[str, Any]]:
    retained, content_type, topic, payload = line.decode().rstrip("\n").split("|", 3)
    return retained == "1", content_type, topic, json.loads(payload)


@pytest.fixture
def agent(mosquitto: Any, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_agent(mosquitto.url, tmp_path, "edge0", slots=4, env=TELEMETRY_ENV)
    try:
        yield proc
    finally:
        stop_process(proc)


async def test_mosquitto_sub_receives_schema_valid_public_json_of_a_run(
    mosquitto: Any, agent: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    wf = taskflow()
    live_topics = ("dagon/v1/runs/#", "dagon/v1/agents/+/telemetry/json", "dagon/v1/coordinator/+/status")
    async with (
        subscriber(mosquitto.port, *(a for t in live_topics for a in ("-t", t)), "-W", "60") as live,
        dagon.connect(mosquitto.url, home=tmp_path / "client") as client,
    ):
        assert client.coordinator is not None and live.stdout is not None
        docs: list[tuple[bool, str, str, dict[str, Any]]] = []
        async with asyncio.timeout(20):
            await client.coordinator.wait_for_agents(1)
            # Telemetry on the wire proves the subscription is live and the agent has a power sample.
            while not docs or schema_for(docs[-1][2]) != "telemetry":
                docs.append(parse(await live.stdout.readline()))
        run = await client.submit(wf)
        result = await run.wait()
        assert result.ok, result.cause
        async with asyncio.timeout(15):
            while not (
                any(t.endswith("/status") and d.get("state") == "succeeded" for _, _, t, d in docs)
                and sum(t.endswith("/result") for _, _, t, _ in docs) == len(wf)
            ):
                docs.append(parse(await live.stdout.readline()))
    run_docs = [d for d in docs if d[2].startswith(f"dagon/v1/runs/{run.id}/")]
    kinds: dict[str, list[dict[str, Any]]] = {}
    for _retained, content_type, topic, doc in docs:
        kind = schema_for(topic)
        validator(kind).validate(doc)
        assert content_type == "application/json", topic
        kinds.setdefault(kind, []).append(doc)
        if kind == "task-result":
            assert topic == topics.run_task_result(run.id, doc["task"])
    assert set(kinds) == {"telemetry", "run-status", "events", "task-result", "coordinator"}
    assert kinds["coordinator"][-1]["online"] is True and kinds["coordinator"][-1]["id"] == client.coordinator.id
    assert {d["agent"] for d in kinds["telemetry"]} == {"edge0"}
    assert all(d["power"]["source"] == "model" and d["power"]["measured"] is False for d in kinds["telemetry"])
    events = [e for d in kinds["events"] for e in d["events"]]
    assert {(e["task"], e["state"]) for e in events if e["type"] == "task"} >= {(n, "succeeded") for n in "ABCDE"}
    assert events[-1]["type"] == "run" and events[-1]["state"] == "succeeded"
    results = {d["task"]: d for d in kinds["task-result"]}
    assert set(results) == set("ABCDE")
    for name, doc in results.items():
        assert doc["state"] == "succeeded" and doc["exit_code"] == 0 and doc["agent"] == "edge0"
        assert doc["duration"] == pytest.approx(result[name].duration)
        energy = doc["energy"]
        assert energy is not None, f"task {name} has no energy"
        assert energy["joules"] > 0 and energy["source"] == "model" and energy["measured"] is False
        assert energy["watts"] > 0
    final = [d for r, _, t, d in run_docs if t.endswith("/status")][-1]
    assert final["counts"] == {"succeeded": 5} and final["finished_at"] is not None

    # A subscriber started after the run gets the retained status and every task result.
    async with subscriber(
        mosquitto.port, "-t", f"dagon/v1/runs/{run.id}/#", "--retained-only", "-C", str(1 + len(wf)), "-W", "10"
    ) as late:
        out, err = await late.communicate()
    assert late.returncode == 0, err.decode()
    late_docs = [parse(line) for line in out.splitlines(keepends=True)]
    assert all(retained for retained, *_ in late_docs)
    by_topic = {topic: doc for _, _, topic, doc in late_docs}
    assert by_topic[topics.run_status(run.id)]["state"] == "succeeded"
    for name in "ABCDE":
        doc = by_topic[topics.run_task_result(run.id, name)]
        validator("task-result").validate(doc)
        assert doc == results[name]  # the retained copy is the published one


def watch_cmd(url: str, run: str) -> list[str]:
    return [
        sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())",
        "watch", run, "--broker", url, "--wait", "15",
    ]  # fmt: skip


async def test_dagon_watch_follows_a_run_live_and_exits_with_its_outcome(
    mosquitto: Any, agent: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    wf = dagon.Workflow("slow")
    wf.shell("first", "sleep 2")  # the watcher subscribes while this runs
    wf.shell("second", "sleep 1", after=["first"])
    async with dagon.connect(mosquitto.url, home=tmp_path / "client") as client:
        assert client.coordinator is not None
        async with asyncio.timeout(20):
            await client.coordinator.wait_for_agents(1)
        run = await client.submit(wf)
        proc = await asyncio.create_subprocess_exec(
            *watch_cmd(mosquitto.url, run.id), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            async with asyncio.timeout(30):
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert (await run.wait()).ok
        # Watching a finished run: the retained status and results, and the outcome as exit code.
        again = await asyncio.create_subprocess_exec(*watch_cmd(mosquitto.url, run.id), stdout=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(30):
                later, _ = await again.communicate()
        finally:
            if again.returncode is None:
                again.kill()
                await again.wait()
    assert again.returncode == 0
    assert f"run {run.id} (slow): succeeded" in later.decode() and "tasks: 2  succeeded 2" in later.decode()
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert "\x1b[" not in text  # not a terminal: plain lines
    lines = text.splitlines()
    # line updates as they happened, then the final view
    assert any(line.endswith("second running on edge0") for line in lines), text
    assert any(line.endswith("second succeeded on edge0: exit code 0") for line in lines), text  # the agent once
    assert any(f"run {run.id}: succeeded" in line for line in lines), text
    assert f"run {run.id} (slow): succeeded" in text
    assert "tasks: 2  succeeded 2" in text
    agent_line = next(line for line in lines if line.startswith("  edge0: cpu "))
    assert " W (modelled)" in agent_line and "mem " in agent_line


async def test_dagon_watch_on_a_terminal_redraws_and_fails_with_a_failed_run(
    mosquitto: Any, agent: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    wf = dagon.Workflow("breaks")
    # Held until the watcher has drawn its first frame (it has subscribed), however loaded the machine.
    wf.shell("gate", f"while [ ! -e {gate} ]; do sleep 0.05; done")
    wf.shell("slow", "sleep 1.5", after=["gate"])
    wf.shell("bad", "sleep 1; exit 4", after=["gate"])
    wf.shell("after_bad", "true", after=["bad"])
    primary, secondary = pty.openpty()
    chunks: list[bytes] = []
    try:
        async with dagon.connect(mosquitto.url, home=tmp_path / "client") as client:
            assert client.coordinator is not None
            async with asyncio.timeout(20):
                await client.coordinator.wait_for_agents(1)
            run = await client.submit(wf)
            proc = await asyncio.create_subprocess_exec(
                *watch_cmd(mosquitto.url, run.id),
                stdout=secondary,
                stderr=secondary,
                env=dict(os.environ, COLUMNS="120"),
            )
            os.close(secondary)
            secondary = -1
            try:
                async with asyncio.timeout(30):
                    while True:
                        try:
                            data = await asyncio.to_thread(os.read, primary, 65536)
                        except OSError:  # EIO: the terminal's last writer exited
                            break
                        if not data:
                            break
                        chunks.append(data)
                        if f"run {run.id}".encode() in b"".join(chunks):
                            gate.touch()
                    await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert (await run.wait()).state is RunState.FAILED
            # The retained documents of a failed run are valid too (null agent, exit code, duration …).
            async with subscriber(
                mosquitto.port, "-t", f"dagon/v1/runs/{run.id}/#", "--retained-only", "-C", str(1 + len(wf)), "-W", "10"
            ) as late:
                retained, _ = await late.communicate()
            states = {}
            for _, _, topic, doc in map(parse, retained.splitlines(keepends=True)):
                validator(schema_for(topic)).validate(doc)
                states[doc.get("task", "run")] = doc["state"]
            expected = {"run": "failed", "gate": "succeeded", "slow": "succeeded", "bad": "failed"}
            assert states == {**expected, "after_bad": "upstream_failed"}
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 1, text
    assert "\x1b[J" in text  # redrawn in place
    final = text.rsplit("\x1b[J", 1)[-1]
    assert f"run {run.id} (breaks): failed" in final
    assert "failed 1" in final and "upstream_failed 1" in final and "succeeded 2" in final
    frames = text.split("\x1b[J")
    # a frame while both ran: the running section names the agent and the elapsed time
    assert any(
        re.search(r"running:\r?\n  (bad|slow) on edge0  \d+\.\ds\r?\n  (bad|slow) on edge0", f) for f in frames
    ), text


def test_dagon_watch_of_an_unknown_run_says_what_to_check(mosquitto: Any) -> None:
    proc = subprocess.run(
        [*watch_cmd(mosquitto.url, "no-such-run")[:-1], "0.5"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert "no status of run 'no-such-run'" in proc.stderr and "dagon runs" in proc.stderr


def test_dagon_watch_stops_quietly_on_ctrl_c(mosquitto: Any) -> None:
    proc = subprocess.Popen(
        watch_cmd(mosquitto.url, "still-to-come"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(2.0)  # imported, connected and subscribed: waiting for the run's status
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        stop_process(proc)  # type: ignore[arg-type]
    assert proc.returncode == 130, err
    assert "Traceback" not in err and out == ""
