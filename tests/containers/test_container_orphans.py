"""A container task does not outlive its agent either (issue 13, point 1): its processes run under
dockerd, not under the agent, but carry the agent life's token in their environment, so the keeper
kills them when the agent is SIGKILLed. Real ``dagon-agent`` process, private dockerd, Mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _broker import stop_process
from _containers import BUSYBOX_IMAGE, Dockerd

import dagon
from dagon._keys import add_pin, agent_signer, coordinator_signer, enroll
from dagon.protocol import raw_public_key

pytestmark = [pytest.mark.docker, pytest.mark.mosquitto]

AGENT = [sys.executable, "-c", "from dagon.cli import agent_main; raise SystemExit(agent_main())"]


def container_state(dockerd: Dockerd, task: str) -> dict[str, Any] | None:
    ids = dockerd.docker("ps", "-aq", "--filter", f"label=dagon.task={task}").split()
    if not ids:
        return None
    state: dict[str, Any] = json.loads(dockerd.docker("inspect", ids[0]))[0]["State"]
    return state


async def test_a_sigkilled_agents_container_is_killed_too(dockerd: Dockerd, mosquitto: Any, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGON_BROKER", "DAGON_RUNTIMES")}
    env.update(DOCKER_HOST=dockerd.url, DAGON_HOME=str(tmp_path / "agent"))
    coordinator_signer(tmp_path / "client")
    enroll(tmp_path / "agent", tmp_path / "client" / "keys" / "coordinator.pub")
    # what `dagon agents approve boxer` does on the coordinator's side
    add_pin(
        tmp_path / "client" / "keys" / "known_agents",
        "boxer",
        raw_public_key(agent_signer(tmp_path / "agent").public_key),
    )
    with (tmp_path / "agent.log").open("wb") as log:
        agent = subprocess.Popen(
            [*AGENT, "--broker", mosquitto.url, "--id", "boxer", "--runtimes", "docker",
             "--scratch", str(tmp_path / "scratch")],
            env=env, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        async with dagon.connect(mosquitto.url, home=tmp_path / "client") as client:
            assert client.coordinator is not None
            async with asyncio.timeout(30):
                await client.coordinator.wait_for_agents(1)
            wf = dagon.Workflow("boxed-orphan")
            wf.container("long", image=BUSYBOX_IMAGE, command="sleep 300")
            await client.submit(wf)
            async with asyncio.timeout(60):
                while not (container_state(dockerd, "long") or {}).get("Running"):
                    await asyncio.sleep(0.2)
            agent.send_signal(signal.SIGKILL)
            agent.wait()
            async with asyncio.timeout(30):  # the keeper kills it (not docker, not the agent)
                while (container_state(dockerd, "long") or {}).get("Running"):
                    await asyncio.sleep(0.2)
    finally:
        stop_process(agent)
        state = container_state(dockerd, "long")
        # The keeper kills, it does not remove: the exited container goes, so later tests on this
        # session's dockerd start from an empty list.
        for cid in dockerd.docker("ps", "-aq", "--filter", "label=dagon.task=long").split():
            dockerd.docker("rm", "-f", cid)
    assert state is not None and state["ExitCode"] == 137, state  # SIGKILL
    assert "keeper: agent pid" in (tmp_path / "agent.log").read_text()
