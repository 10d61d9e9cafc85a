"""A real deployment for attack tests: one ``dagon coordinator`` process and ``dagon-agent``
processes on a real Mosquitto, each in its own ``DAGON_HOME`` as on separate machines.

The coordinator's home is also the operator's: runs are submitted from it (``dagon submit``),
and agents are enrolled there the way an operator does it (``dagon keys trust-agent`` writes
the same line). The intruder is an ordinary MQTT client with no dagon key.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from _broker import stop_process

from dagon._keys import add_pin, agent_signer, coordinator_signer, enroll
from dagon.protocol import decode_public, raw_public_key, topics
from dagon.protocol.transport import MqttTransport

ROOT = Path(__file__).resolve().parents[2]
DAGON = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())"]
AGENT = [sys.executable, "-c", "from dagon.cli import agent_main; raise SystemExit(agent_main())"]


def _environ(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGON_")}
    env.update(DAGON_HOME=str(home), COLUMNS="200", **(extra or {}))
    return env


class Deployment:
    """Processes started here are stopped by PID in :meth:`close`."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url = url
        self.tmp = tmp
        self.home = tmp / "coord"
        self.home.mkdir(parents=True, exist_ok=True)
        coordinator_signer(self.home)  # `dagon keys init`
        self.procs: list[subprocess.Popen[bytes]] = []
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}

    # -- processes -------------------------------------------------------------

    def start_coordinator(self, *args: str) -> subprocess.Popen[bytes]:
        log = (self.home / "coordinator.log").open("ab")
        proc = subprocess.Popen(
            [*DAGON, "coordinator", "--broker", self.url, *args],
            env=_environ(self.home, {"DAGON_LOG_LEVEL": "INFO"}), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        log.close()
        self.procs.append(proc)
        self.coordinator = proc
        return proc

    def agent_home(self, name: str) -> Path:
        return self.tmp / name

    def enroll_agent(self, name: str) -> None:
        """Both directions, as an operator does it: the agent obeys the coordinator's key
        (`dagon-agent enroll`), the coordinator admits the agent's (`dagon keys trust-agent`)."""
        home = self.agent_home(name)
        home.mkdir(parents=True, exist_ok=True)
        enroll(home, self.home / "keys" / "coordinator.pub")
        pins = self.home / "keys" / "known_agents"
        if f"{name} " not in (pins.read_text() if pins.exists() else ""):
            add_pin(pins, name, raw_public_key(agent_signer(home).public_key))

    def start_agent(
        self, name: str, *args: str, env: dict[str, str] | None = None, admit: bool = True
    ) -> subprocess.Popen[bytes]:
        home = self.agent_home(name)
        home.mkdir(parents=True, exist_ok=True)
        if admit:
            self.enroll_agent(name)
        else:
            enroll(home, self.home / "keys" / "coordinator.pub")
        log = (home / "agent.log").open("ab")
        proc = subprocess.Popen(
            [*AGENT, "--broker", self.url, "--id", name, "--slots", "2", "--scratch", str(home / "scratch"),
             "--log-level", "INFO", *args],
            env=_environ(home, env), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        log.close()
        self.procs.append(proc)
        self.agents[name] = proc
        return proc

    def stop_agent(self, name: str) -> None:
        stop_process(self.agents.pop(name))

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)

    # -- the operator's commands -------------------------------------------------

    def dagon(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*DAGON, *args], capture_output=True, text=True, timeout=timeout, env=_environ(self.home), cwd=ROOT,
            check=False,
        )  # fmt: skip

    def dagon_background(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        """A ``dagon`` command left running (stopped in :meth:`close`); its output goes to ``log``."""
        with (self.tmp / log).open("ab") as out:
            proc = subprocess.Popen(
                [*DAGON, *args], env=_environ(self.home), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
            )
        self.procs.append(proc)
        return proc

    def workflow(self, name: str, tasks: Iterable[tuple[str, str, dict[str, Any]]]) -> Path:
        """A workflow file: ``(task, command, options)`` per shell task."""
        lines = ["import dagon", f"wf = dagon.Workflow({name!r})"]
        lines += [f"wf.shell({task!r}, {command!r}, **{options!r})" for task, command, options in tasks]
        path = self.tmp / f"{name}.py"
        path.write_text("\n".join(lines) + "\n")
        return path

    def submit(self, workflow: Path, *, wait: bool = True) -> tuple[str, subprocess.CompletedProcess[str]]:
        """``dagon submit`` from the coordinator's home; returns the run id and the completed process."""
        out = self.dagon("submit", str(workflow), "--broker", self.url, *(["--wait"] if wait else []))
        run = out.stdout.splitlines()[0].strip() if out.stdout else ""
        return run, out

    def logs(self, name: str | None = None) -> str:
        path = self.home / "coordinator.log" if name is None else self.agent_home(name) / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def wait_log(self, text: str, *, name: str | None = None, within: float = 30, count: int = 1) -> None:
        """Until ``text`` shows (``count`` times) in the coordinator's (or agent ``name``'s) log."""
        what = f"{text!r} {count} time(s) in the log of {name or 'coordinator'}"
        await until(lambda: self.logs(name).count(text) >= count, within=within, what=what)

    def alive(self) -> bool:
        return self.coordinator is not None and self.coordinator.poll() is None


async def until(check: Callable[[], bool], *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


async def retained(url: str, topic: str, *, settle: float = 1.0) -> dict[str, bytes]:
    """Retained messages under ``topic`` (a filter) as the broker holds them now."""
    found: dict[str, bytes] = {}
    async with MqttTransport(url, client_id=f"reader-{os.urandom(3).hex()}") as reader:
        await reader.subscribe(topic)
        messages = reader.messages()
        try:
            async with asyncio.timeout(settle):
                while True:
                    msg = await anext(messages)
                    if msg.retain:
                        found[msg.topic] = msg.payload
        except TimeoutError:
            pass
    return found


async def task_results(url: str, run: str) -> dict[str, dict[str, Any]]:
    docs = await retained(url, topics.run_task_results(run))
    return {doc["task"]: doc for doc in (decode_public(p) for p in docs.values() if p)}


def dump(doc: object) -> str:
    return json.dumps(doc, indent=1, default=str)


async def run_status(url: str, run: str, *, settle: float = 0.5) -> dict[str, Any]:
    """The retained status of ``run`` now (``{}`` if there is none)."""
    docs = await retained(url, topics.run_status(run), settle=settle)
    payload = docs.get(topics.run_status(run))
    return decode_public(payload) if payload else {}


async def run_finished(url: str, run: str, *, within: float = 90) -> dict[str, Any]:
    """The retained status of ``run`` once it says the run ended."""
    deadline = time.monotonic() + within
    while True:
        doc = await run_status(url, run)
        if doc.get("state") in ("succeeded", "failed", "cancelled", "rejected"):
            return doc
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run} did not end within {within} s: {doc}")
