"""The README's first examples, run as a user would paste them (issue 14, point 10)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process
from integration._stack import start_agent

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.mosquitto
def test_the_async_example_prints_every_event_by_name(mosquitto: Any, tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    blocking, asynchronous = blocks[0], blocks[1]
    assert 'broker="mqtt://127.0.0.1:1883"' in asynchronous
    build = blocking.split("result = wf.run()")[0]  # the workflow only: the async example runs it
    body = asynchronous.replace("mqtt://127.0.0.1:1883", mosquitto.url)
    script = tmp_path / "readme_async.py"
    script.write_text(
        f"import asyncio\n{build}\nasync def main() -> None:\n{textwrap.indent(body, '    ')}\nasyncio.run(main())\n"
    )
    (tmp_path / "client").mkdir()
    agent = start_agent(mosquitto.url, tmp_path, "readme-agent")
    try:
        env = {k: v for k, v in os.environ.items() if k != "DAGON_BROKER"}
        out = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=90, check=False,
            env=dict(env, DAGON_HOME=str(tmp_path / "client")), cwd=tmp_path,
        )  # fmt: skip
    finally:
        stop_process(agent)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "None" not in out.stdout, out.stdout
    assert "greet succeeded" in lines and "shout succeeded" in lines
    assert lines[-1] == "run succeeded", out.stdout
