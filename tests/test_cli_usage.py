"""What the command lines accept, refuse and print, run as real subprocesses (issue 14, points 3, 4, 6, 7)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from _broker import free_port, stop_process
from integration._stack import start_agent

ROOT = Path(__file__).resolve().parent.parent
DAGON = [sys.executable, "-c", "from dagon.cli import main; raise SystemExit(main())"]
AGENT = [sys.executable, "-c", "from dagon.cli import agent_main; raise SystemExit(agent_main())"]
TASKFLOW = "examples/taskflow/taskflow.py"


def environ(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGON_BROKER", "DAGON_LOG_LEVEL", "COLUMNS")}
    return {**env, "DAGON_HOME": str(home), **extra}


def dagon(*args: str, home: Path, cmd: list[str] = DAGON, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=120, env=environ(home, **env), cwd=ROOT, check=False
    )


def on_terminal(*args: str, home: Path, columns: int = 80) -> tuple[int, str]:
    """Run ``dagon ARGS`` with a pseudo-terminal of ``columns`` columns as stdout: (exit code, output)."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen([*DAGON, *args], stdout=secondary, stderr=secondary, env=environ(home), cwd=ROOT)
    os.close(secondary)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
    code = proc.wait(timeout=60)
    return code, b"".join(chunks).decode(errors="replace")


# -- 3. unknown options are errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["run", TASKFLOW, "--dry_run"], "dagon run: error: unrecognized arguments: --dry_run (did you mean --dry-run"),
        (["run", TASKFLOW, "--brokr", "mqtt://127.0.0.1:1"], "--brokr (did you mean --broker?)"),
        (["run", "--brokr", "mqtt://127.0.0.1:1", TASKFLOW], "--brokr (did you mean --broker?)"),
        (["run", "--brok", "mqtt://127.0.0.1:1", TASKFLOW], "--brok (did you mean --broker?)"),  # no abbreviations
        (["submit", "--bogus", TASKFLOW], "usage: dagon submit"),
        (["sbumit", TASKFLOW], "invalid choice: 'sbumit'"),
    ],
)
def test_unknown_options_are_refused_and_nothing_runs(args: list[str], said: str, tmp_path: Path) -> None:
    out = dagon(*args, home=tmp_path / "home")
    assert out.returncode == 2, out.stderr
    assert said in out.stderr
    assert "usage: dagon [-h]" not in out.stderr or args[0] == "sbumit"  # the command's own usage
    assert not (tmp_path / "home").exists()  # nothing ran: no store, no scratch, no key


def test_every_command_of_both_programs_refuses_an_unknown_option(tmp_path: Path) -> None:
    """Each subcommand (``keys list``, ``agents``, ``dagon-agent doctor`` …) given ``--jsno``: exit 2, its own usage."""
    probe = """
import argparse, contextlib, io, json, sys
from dagon.cli._main import parser
from dagon.cli._agent import _parser as agent_parser
from dagon.cli import main, agent_main

def leaves(p, path):
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs or not subs[0].required:
        yield path
    for a in subs:
        for name, sp in a.choices.items():
            yield from leaves(sp, [*path, name])

found = {}
for prog, build, entry in (("dagon", parser, main), ("dagon-agent", agent_parser, agent_main)):
    for path in leaves(build(), []):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = entry([*path, "--jsno"])
            except SystemExit as exc:
                code = exc.code
        found[" ".join([prog, *path])] = [code, err.getvalue()]
print(json.dumps(found))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=environ(tmp_path), cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert {"dagon run", "dagon keys list", "dagon agents", "dagon-agent", "dagon-agent enroll",
            "dagon-agent service install", "dagon-agent doctor"} <= set(found)  # fmt: skip
    for command, (code, err) in found.items():
        assert code == 2, (command, err)
        assert f"{command}: error: unrecognized arguments: --jsno" in err, (command, err)
        assert f"usage: {command}" in err, (command, err)
    assert "(did you mean --json?)" in found["dagon keys list"][1]


def test_the_script_gets_the_arguments_after_the_double_dash(tmp_path: Path) -> None:
    script = tmp_path / "argv.py"
    script.write_text(
        "import sys\nimport dagon\nprint('argv', sys.argv[1:])\n"
        "wf = dagon.Workflow('argv')\nwf.shell('t', 'true')\nwf.run()\n"
    )
    out = dagon("run", str(script), "--dry-run", "--", "--dry_run", "x", home=tmp_path / "home")
    assert out.returncode == 0, out.stderr
    assert "argv ['--dry_run', 'x']" in out.stdout  # dagon took --dry-run, the script the rest
    assert not (tmp_path / "home").exists()  # a dry run


def test_dagon_agent_refuses_unknown_options_and_misplaced_commands(tmp_path: Path) -> None:
    out = dagon("--brokr", "mqtt://127.0.0.1:1", home=tmp_path, cmd=AGENT)
    assert out.returncode == 2
    assert "dagon-agent: error: unrecognized arguments: --brokr (did you mean --broker?)" in out.stderr
    out = dagon("--broker", "mqtt://127.0.0.1:1", "key", home=tmp_path, cmd=AGENT)
    assert out.returncode == 2 and "the command comes first: dagon-agent key" in out.stderr
    assert not (tmp_path / "keys").exists()


# -- 4. errors in the script ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "line", "said"),
    [
        ("import dagon\nx = (\n", 2, "SyntaxError: '(' was never closed"),
        ("import dagon\nwf = dagon.Workflow('w')\nprint(undefined_name)\n", 3, "NameError: name 'undefined_name'"),
        (
            "import dagon\nwf = dagon.Workflow('w')\nwf.shell('a', 'echo', timout=5)\n", 3,
            "dagon.ValidationError: task 'a': unknown option 'timout' (did you mean 'timeout'?)",
        ),
        (
            "import dagon\nwf = dagon.Workflow('w')\nwf.python('p', 'os:getcwd', options={'cpu': 2})\n", 3,
            "unknown option 'cpu' (did you mean 'cpus'?)",
        ),
        (
            "import dagon\nwf = dagon.Workflow('w')\nwf.map('m', 'echo {item}', over=[1], retyr=2)\n", 3,
            "unknown option 'retyr' (did you mean 'retry'?)",
        ),
        (
            "import dagon\nwf = dagon.Workflow('w')\nwf.container('c', image='x', command='ls', netwrk='none')\n", 3,
            "docker does not understand the option 'netwrk' (did you mean 'network'?)",
        ),
        (
            "from dagon import Workflow\nfrom dagon.docker_task import DockerTask\nwf = Workflow('w')\n"
            "wf.add_task(DockerTask('A', 'ls', imge='ubuntu'))\n", 4,
            "TaskType.DOCKER has no option(s) ['imge'] (did you mean 'image'?)",
        ),
        (
            "from dagon import Workflow\nfrom dagon.task import DagonTask, TaskType\nwf = Workflow('w')\n"
            "wf.add_task(DagonTask(TaskType.SLURM, 'S', 'hostname', partiton='debug'))\n", 4,
            "TaskType.SLURM has no option(s) ['partiton'] (did you mean 'partition'?)",
        ),
    ],
)  # fmt: skip
def test_an_error_in_the_script_shows_only_its_frames(source: str, line: int, said: str, tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text(source)
    for command in ("run", "submit", "graph"):
        extra = ["--broker", "mqtt://127.0.0.1:1"] if command == "submit" else []
        out = dagon(command, str(script), *extra, home=tmp_path / "home")
        assert out.returncode == 2, (command, out.stderr)
        assert f'File "{script}", line {line}' in out.stderr, (command, out.stderr)
        assert said in out.stderr, (command, out.stderr)
        for inside in ("runpy", "dagon/cli", "dagon/_script.py", "core/_model.py", "_dagonstar", "<frozen"):
            assert inside not in out.stderr, (command, inside, out.stderr)


def test_a_helper_module_of_the_script_is_one_of_its_frames(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("def build():\n    raise RuntimeError('no input files')\n")
    script = tmp_path / "wf.py"
    script.write_text("import helper\nhelper.build()\n")
    out = dagon("run", str(script), home=tmp_path / "home")
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "Traceback (most recent call last):",
        f'  File "{script}", line 2, in <module>',
        "    helper.build()",
        f'  File "{tmp_path / "helper.py"}", line 2, in build',
        "    raise RuntimeError('no input files')",
        "RuntimeError: no input files",
    ]


# -- 6. output a person can copy ------------------------------------------------------------------------


def test_runs_never_cuts_a_run_id(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert dagon("run", TASKFLOW, home=home).returncode == 0
    (row,) = json.loads(dagon("runs", "--json", home=home).stdout)
    run_id = row["run"]
    piped = dagon("runs", home=home, COLUMNS="80")
    assert piped.returncode == 0, piped.stderr
    (line,) = [line for line in piped.stdout.splitlines() if run_id in line]
    assert "Taskflow-Demo" in line and "succeeded" in line and "…" not in piped.stdout  # one row, nothing cut
    code, shown = on_terminal("runs", home=home, columns=80)
    assert code == 0, shown
    assert run_id in shown and "…" not in shown  # cells wrap on a terminal; the id is never one of them
    assert max(len(line) for line in shown.splitlines() if "│" in line) <= 80


def test_keys_list_names_every_key_and_says_it_in_json(tmp_path: Path) -> None:
    home = tmp_path / "coord"
    init = dagon("keys", "init", home=home)
    assert init.returncode == 0, init.stderr
    client = dagon("keys", "client", home=tmp_path / "cli")
    client_fp = client.stdout.split("fingerprint ")[1].split()[0]
    assert dagon("keys", "trust-client", str(tmp_path / "cli" / "keys" / "client.pub"), home=home).returncode == 0
    key = dagon("key", home=tmp_path / "agent", cmd=AGENT)
    (tmp_path / "agent.pub").write_text(key.stdout)
    assert dagon("keys", "trust-agent", "edge-1", str(tmp_path / "agent.pub"), home=home).returncode == 0
    out = dagon("keys", "list", "--json", home=home)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    roles = {(r["role"], r["id"]) for r in rows}
    assert {("own coordinator key", ""), ("trusted client", ""), ("enrolled agent", "edge-1")} <= roles
    assert client_fp in {r["fingerprint"] for r in rows if r["role"] == "trusted client"}
    table = dagon("keys", "list", home=home, COLUMNS="80")
    assert client_fp in table.stdout and "edge-1" in table.stdout


# -- 7. help and logs -----------------------------------------------------------------------------------


def test_every_argument_of_both_programs_has_help(tmp_path: Path) -> None:
    probe = """
import argparse
from dagon.cli._main import parser
from dagon.cli._agent import _parser as agent_parser

def walk(p, path):
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                walk(sp, [*path, name])
        elif not isinstance(a, (argparse._HelpAction, argparse._VersionAction)) and not a.help:
            print(" ".join(path), a.option_strings or a.dest)

walk(parser(), ["dagon"])
walk(agent_parser(), ["dagon-agent"])
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=environ(tmp_path), cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""  # every positional and option explains itself
    helped = dagon("run", "--help", home=tmp_path)
    assert "the workflow script" in helped.stdout and "Arguments for the script go after --" in helped.stdout
    agent_help = dagon("--help", home=tmp_path, cmd=AGENT)
    assert agent_help.returncode == 0
    for command in ("enroll", "key", "service", "doctor"):
        assert f"    {command} " in agent_help.stdout, agent_help.stdout
    bad = dagon("--log-level", "loud", "runs", home=tmp_path)
    assert bad.returncode == 2 and "choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR'" in bad.stderr
    assert dagon("--log-level", "debug", "keys", "list", "--json", home=tmp_path).returncode == 0


def test_a_broker_dagon_agent_cannot_reach_is_named_without_the_embedded_mode(tmp_path: Path) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    out = dagon("--broker", url, "--id", "a", "--no-wait-for-broker", "--insecure", home=tmp_path, cmd=AGENT)
    assert out.returncode == 2
    assert f"could not connect to the MQTT broker at {url}" in out.stderr
    assert "embedded" not in out.stderr


@pytest.mark.mosquitto
def test_services_start_with_info_lines_and_agents_lists_them_uncut(mosquitto: Any, tmp_path: Path) -> None:
    client = tmp_path / "client"  # the coordinator's home; start_agent enrols its agents there
    client.mkdir()
    labels = "site=lab,zone=north-west-annex-building-7,rack=r12-beside-the-window"
    agent = start_agent(mosquitto.url, tmp_path, "edge-with-a-rather-long-name", args=["--labels", labels])
    coord = subprocess.Popen(
        [*DAGON, "coordinator", "--broker", mosquitto.url],
        env=environ(client), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            out = dagon("agents", "--json", "--broker", mosquitto.url, home=client)
            rows = json.loads(out.stdout or "[]") if out.returncode == 0 else []
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        (row,) = rows
        assert row["labels"] == dict(kv.split("=") for kv in labels.split(","))
        piped = dagon("agents", "--broker", mosquitto.url, home=client, COLUMNS="80")
        assert piped.returncode == 0, piped.stderr
        (line,) = [line for line in piped.stdout.splitlines() if "edge-with-a-rather-long-name" in line]
        assert labels.replace(",", ", ") in line and "process, python" in line
        code, shown = on_terminal("agents", "--broker", mosquitto.url, home=client, columns=80)
        assert code == 0, shown
        assert "…" not in shown and "edge-with-a-rather-long-name" in shown
        rows_shown = [line.split("│") for line in shown.splitlines() if line.startswith("│")]
        assert "".join(cells[-2].strip() for cells in rows_shown) == labels.replace(",", ", ").replace(" ", "")
        assert "process,python," in "".join(cells[-3].strip() for cells in rows_shown)  # wrapped, not cut
    finally:
        stop_process(agent)
        stop_process(coord)
    assert coord.stderr is not None
    logged = coord.stderr.read().decode()
    coord.stderr.close()
    assert " INFO dagon.cli: coordinator 'main' serving on" in logged, logged
    assert " INFO dagon.cli: coordinator key SHA256:" in logged
    assert " WARNING " not in logged, logged
    agent_log = (tmp_path / "edge-with-a-rather-long-name" / "agent.log").read_text()
    assert " INFO dagon.agent_cli: agent edge-with-a-rather-long-name serving on" in agent_log
    assert " WARNING " not in agent_log, agent_log
