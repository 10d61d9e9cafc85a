"""What the CLI says about a run is true (issue 14, points 1, 2 and 5): the coordinator answers
every submission and cancellation, trust changes apply without a restart, Ctrl-C says what it did.

Real ``dagon`` CLI processes against a real ``dagon coordinator`` and ``dagon-agent`` over a real
Mosquitto; the task processes are checked by PID.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process

from dagon._keys import coordinator_signer
from dagon.protocol import fingerprint

from ._stack import start_agent

pytestmark = pytest.mark.mosquitto

DAGON = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())"]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGON_BROKER", "DAGON_INSECURE", "DAGON_COORDINATOR")}
    env.update(DAGON_HOME=str(home), COLUMNS="80")
    return env


def dagon(*args: str, home: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DAGON, *args], env=_env(home), capture_output=True, text=True, timeout=timeout, check=False)


class Stack:
    """A ``dagon coordinator`` (home ``tmp/client``, which is also the trusted client's) and one agent."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp, self.home = url, tmp, tmp / "client"
        self.home.mkdir(parents=True, exist_ok=True)
        coordinator_signer(self.home)
        self.agent = start_agent(url, tmp, "worker", slots=2, args=["--labels", "site=lab"])
        self.log = self.home / "coordinator.log"
        with self.log.open("wb") as out:
            self.coordinator = subprocess.Popen(
                [*DAGON, "--log-level", "INFO", "coordinator", "--broker", url],
                env=_env(self.home), stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while "agent worker online" not in self.log.read_text():
            assert self.coordinator.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"the agent never came online\n{self.log.read_text()}"
            time.sleep(0.2)

    def script(self, name: str, body: str) -> Path:
        path = self.tmp / f"{name}.py"
        path.write_text(f"import dagon\nwf = dagon.Workflow({name!r})\n{body}wf.run()\n")
        return path

    def status(self, run: str) -> dict[str, Any]:
        out = dagon("status", run, "--json", "--broker", self.url, home=self.home)
        assert out.returncode == 0, out.stderr
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc

    def wait_state(self, run: str, state: str, within: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while (doc := self.status(run))["state"] != state:
            assert time.monotonic() < deadline, f"run {run} is {doc['state']}, not {state}\n{self.log.read_text()}"
            time.sleep(0.5)
        return doc


@pytest.fixture
def stack(mosquitto: Any, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(mosquitto.url, tmp_path)
    try:
        yield s
    finally:
        stop_process(s.agent)
        stop_process(s.coordinator)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(") ")[-1].startswith("Z"))  # a zombie is gone


def _wait_pid(path: Path, within: float = 60) -> int:
    deadline = time.monotonic() + within
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"the task never wrote {path}"
        time.sleep(0.2)
    return int(path.read_text())


def _wait_gone(pid: int, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while _alive(pid):
        assert time.monotonic() < deadline, f"task process {pid} still runs"
        time.sleep(0.2)


def test_an_untrusted_key_is_refused_with_its_fingerprint_then_trusted_without_a_restart(stack: Stack) -> None:
    stranger = stack.tmp / "stranger"
    shown = dagon("keys", "client", home=stranger)
    assert shown.returncode == 0, shown.stderr
    assert "trust-coordinator" in shown.stdout  # no coordinator key here yet: the step is named
    client_pub = stranger / "keys" / "client.pub"
    key = shown.stdout.split("fingerprint ")[1].split()[0]
    assert key == fingerprint(base64.b64decode(client_pub.read_text().split()[1]))
    script = stack.script("stranger_run", 'wf.shell("a", "true")\n')

    # no coordinator key to check answers against: said before anything is sent
    out = dagon("submit", str(script), "--broker", stack.url, home=stranger)
    assert out.returncode == 2 and "dagon keys trust-coordinator coordinator.pub" in out.stderr, out.stderr
    pinned = dagon("keys", "trust-coordinator", str(stack.home / "keys" / "coordinator.pub"), home=stranger)
    assert pinned.returncode == 0, pinned.stderr

    started = time.monotonic()
    out = dagon("submit", str(script), "--broker", stack.url, "--wait", home=stranger)
    assert out.returncode == 2, out.stdout + out.stderr
    assert key.startswith("SHA256:") and key in out.stderr, out.stderr
    assert "dagon keys trust-client client.pub" in out.stderr and str(client_pub) in out.stderr
    assert "\n" not in out.stderr.strip()  # one line a person can copy
    assert time.monotonic() - started < 30  # answered, not timed out
    assert out.stdout == ""  # no run id: nothing was accepted
    # the coordinator's log names the same key in the same format (the start of its fingerprint)
    assert key[:17] in stack.log.read_text()

    trusted = dagon("keys", "trust-client", str(client_pub), home=stack.home)  # on the running coordinator
    assert trusted.returncode == 0 and key in trusted.stdout and "no restart" in trusted.stdout, trusted.stderr
    out = dagon("submit", str(script), "--broker", stack.url, "--wait", home=stranger)
    assert out.returncode == 0, out.stderr
    run = out.stdout.splitlines()[0].strip()
    assert stack.status(run)["state"] == "succeeded"
    assert stack.coordinator.poll() is None  # the same coordinator process all along
    assert f"client key {key} is trusted from now on" in stack.log.read_text()


def test_no_coordinator_answering_is_a_timeout_error_within_the_bound(stack: Stack) -> None:
    script = stack.script("nobody", 'wf.shell("a", "true")\n')
    started = time.monotonic()
    out = dagon(
        "submit", str(script), "--broker", stack.url, "--coordinator", "nope", "--answer-timeout", "3", "--wait",
        home=stack.home,
    )  # fmt: skip
    took = time.monotonic() - started
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"no coordinator with id 'nope' answered on {stack.url} within 3 s" in out.stderr, out.stderr
    assert f"dagon coordinator --broker {stack.url} --id nope" in out.stderr
    assert took < 20, took  # 3 s plus starting Python and connecting; never a hang

    # the coordinator was there but is gone (SIGKILL: its retained status still says online)
    stack.coordinator.send_signal(signal.SIGKILL)
    stack.coordinator.wait()
    started = time.monotonic()
    out = dagon(
        "submit", str(script), "--broker", stack.url, "--coordinator", "main", "--answer-timeout", "4", "--wait",
        home=stack.home,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "no coordinator with id 'main' answered the submission" in out.stderr and "within 4 s" in out.stderr
    assert time.monotonic() - started < 25


def test_a_run_refused_at_admission_exits_non_zero_with_the_reason(stack: Stack) -> None:
    script = stack.script("mars", 'wf.shell("a", "true", labels={"site": "mars"})\n')
    out = dagon("submit", str(script), "--broker", stack.url, home=stack.home)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "rejected run mars-" in out.stderr and "site" in out.stderr and "mars" in out.stderr, out.stderr
    assert out.stdout == ""


def test_cancel_stops_the_running_process_and_the_run_is_cancelled(stack: Stack) -> None:
    pidfile = stack.tmp / "long.pid"
    script = stack.script("long", f'wf.shell("sleeper", "echo $$ > {pidfile}; exec sleep 300")\n')
    out = dagon("submit", str(script), "--broker", stack.url, home=stack.home)
    assert out.returncode == 0, out.stderr
    run = out.stdout.strip()
    pid = _wait_pid(pidfile)
    assert _alive(pid)

    cancelled = dagon("cancel", run, "--broker", stack.url, home=stack.home)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"run {run}: cancelled" in cancelled.stdout
    _wait_gone(pid)
    doc = stack.wait_state(run, "cancelled")
    assert doc["counts"] == {"cancelled": 1}
    runs = dagon("runs", "--json", home=stack.home)  # the coordinator's store (its home)
    assert runs.returncode == 0, runs.stderr
    assert {r["run"]: r["state"] for r in json.loads(runs.stdout)}[run] == "cancelled"

    again = dagon("cancel", run, "--broker", stack.url, home=stack.home)
    assert again.returncode == 2 and "already ended: cancelled" in again.stderr, again.stderr
    unknown = dagon("cancel", "no-such-run", "--broker", stack.url, home=stack.home)
    assert unknown.returncode == 2 and "has no run no-such-run in progress" in unknown.stderr, unknown.stderr


def _submit_then_interrupt(
    stack: Stack, script: Path, *extra: str, pidfile: Path | None = None
) -> tuple[str, str, int]:
    proc = subprocess.Popen(
        [*DAGON, "submit", str(script), "--broker", stack.url, "--wait", *extra],
        env=_env(stack.home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        run = proc.stdout.readline().strip()  # printed once the coordinator accepted it
        assert run, proc.stderr.read() if proc.stderr else ""
        if pidfile is not None:
            _wait_pid(pidfile)
        else:
            time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return run, err, proc.returncode


def test_ctrl_c_on_submit_wait_detaches_and_the_run_finishes(stack: Stack) -> None:
    script = stack.script("detached", 'wf.shell("a", "sleep 4")\nwf.shell("b", "true", after=["a"])\n')
    run, err, code = _submit_then_interrupt(stack, script)
    assert code == 130, err
    assert f"detached: run {run} goes on on the coordinator; `dagon cancel {run} --broker {stack.url}` stops it" in err
    assert "stopped" not in err.replace("stops it", "")  # nothing claims tasks were stopped
    stack.wait_state(run, "succeeded")


def test_ctrl_c_with_cancel_on_interrupt_cancels_the_run(stack: Stack) -> None:
    pidfile = stack.tmp / "interrupted.pid"
    script = stack.script("interrupted", f'wf.shell("sleeper", "echo $$ > {pidfile}; exec sleep 300")\n')
    run, err, code = _submit_then_interrupt(stack, script, "--cancel-on-interrupt", pidfile=pidfile)
    assert code == 130, err
    assert f"interrupted: cancelled run {run}" in err, err
    _wait_gone(int(pidfile.read_text()))
    stack.wait_state(run, "cancelled")


def _run_then_interrupt(stack: Stack, script: Path, pidfile: Path, home: Path, **env: str) -> tuple[str, int]:
    proc = subprocess.Popen(
        [*DAGON, "run", str(script), "--broker", stack.url],
        env={**_env(home), **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_pid(pidfile)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return err, proc.returncode


def test_ctrl_c_on_dagon_run_with_a_broker_cancels_the_run_of_its_own_coordinator(stack: Stack) -> None:
    """`dagon run --broker` runs its coordinator in the CLI process: its runs end with it, so Ctrl-C
    cancels them — the task process on the (separate) agent is stopped, as the message says."""
    home = stack.tmp / "runner"
    home.mkdir()
    shutil.copytree(stack.home / "keys", home / "keys")  # the same coordinator key the agent obeys
    pidfile = stack.tmp / "in-process.pid"
    script = stack.script("in_process", f'wf.shell("sleeper", "echo $$ > {pidfile}; exec sleep 300")\n')
    err, code = _run_then_interrupt(stack, script, pidfile, home)
    assert code == 130, err
    assert "interrupted: cancelled run in_process-" in err and "stopped on the agents" in err, err
    _wait_gone(int(pidfile.read_text()))
    runs = dagon("runs", "--json", home=home)
    assert [r["state"] for r in json.loads(runs.stdout)] == ["cancelled"], runs.stdout + runs.stderr


def test_ctrl_c_on_dagon_run_through_a_standalone_coordinator_detaches(stack: Stack) -> None:
    pidfile = stack.tmp / "standalone.pid"
    script = stack.script("standalone", f'wf.shell("a", "echo $$ > {pidfile}; sleep 3")\n')
    err, code = _run_then_interrupt(stack, script, pidfile, stack.home, DAGON_COORDINATOR="auto")
    assert code == 130, err
    assert "detached: run standalone-" in err and "goes on on the coordinator" in err, err
    run = err.split("detached: run ")[1].split()[0]
    stack.wait_state(run, "succeeded")
