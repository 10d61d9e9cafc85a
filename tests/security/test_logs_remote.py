"""`dagon logs` through a standalone coordinator over the broker: real `dagon coordinator` and
`dagon-agent` processes on a real Mosquitto. The full log comes from the agent's data server under
a short-lived `logs` grant bound to the coordinator key; without that key only the stderr tail the
coordinator kept is shown, said to be one — and a grant never reaches past what it names."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from dagon._keys import coordinator_signer
from dagon.protocol import Codec, Grant, bind_grant, mint_grant, raw_public_key, topics

from ._deploy import DAGON, ROOT, Deployment, _environ, retained

pytestmark = pytest.mark.mosquitto


def dagon_in(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DAGON, *args], capture_output=True, text=True, timeout=90, env=_environ(home), cwd=ROOT, check=False
    )


async def test_logs_through_a_standalone_coordinator(deployment: Deployment) -> None:
    deployment.start_coordinator()
    deployment.start_agent("edge")
    wf = deployment.workflow(
        "remote-logs",
        [("ok", "echo stdout-of-ok; echo stderr-of-ok >&2", {}), ("bad", "echo partial; echo broken >&2; exit 3", {})],
    )
    run, out = deployment.submit(wf)
    assert out.returncode == 1, out.stderr + deployment.logs()  # bad failed, as written
    url = deployment.url

    # An operator's laptop holding a copy of the coordinator's keys (no run store): the agent's data server.
    laptop = deployment.tmp / "laptop"
    shutil.copytree(deployment.home / "keys", laptop / "keys")
    got = dagon_in(laptop, "logs", run, "ok", "--broker", url)
    assert (got.returncode, got.stdout, got.stderr) == (0, "stdout-of-ok\n", ""), got.stderr
    got = dagon_in(laptop, "logs", run, "bad", "--stderr", "--broker", url)
    assert (got.returncode, got.stdout) == (0, "broken\n"), got.stderr
    assert "note:" not in got.stderr  # the whole log, not the tail

    # A client that cannot ask the coordinator (its key not pinned here; test_logs_client.py covers a client
    # that can): only the stderr tail the coordinator kept, said so, with the fix.
    client = deployment.tmp / "client"
    tail = dagon_in(client, "logs", run, "bad", "--stderr", "--broker", url)
    assert (tail.returncode, tail.stdout) == (0, "broken\n"), tail.stderr
    assert "stderr tail the coordinator kept" in tail.stderr and "dagon keys trust-coordinator" in tail.stderr
    none = dagon_in(client, "logs", run, "bad", "--broker", url)
    assert none.returncode == 2 and "the coordinator keeps no copy of stdout" in none.stderr
    assert "dagon keys trust-coordinator coordinator.pub" in none.stderr
    typo = dagon_in(client, "logs", run, "bda", "--broker", url)
    assert typo.returncode == 2 and "did you mean 'bad'?" in typo.stderr
    missing = dagon_in(client, "logs", "no-such-run", "ok", "--broker", url)
    assert missing.returncode == 2 and "no run 'no-such-run'" in missing.stderr

    # On the coordinator's own machine the run store names the directory: read in place.
    here = deployment.dagon("logs", run, "ok", "--broker", url)
    assert (here.returncode, here.stdout) == (0, "stdout-of-ok\n"), here.stderr

    # What a logs grant opens, and nothing more.
    announce = (await retained(url, topics.agent_status("edge")))[topics.agent_status("edge")]
    data_url = Codec(sender="t").decode(announce).message.capabilities.data_url  # type: ignore[attr-defined]
    signer = coordinator_signer(deployment.home)

    def token(stream: str, op: str = "logs", task: str = "ok") -> str:
        grant = Grant(run, task, 1, stream, "client", op, time.time() + 60, raw_public_key(signer.public_key))
        return bind_grant(mint_grant(signer, grant), signer)

    async with aiohttp.ClientSession() as session:

        async def get(path: str, bearer: str) -> tuple[int, str]:
            async with session.get(f"{data_url}{path}", headers={"Authorization": f"Bearer {bearer}"}) as resp:
                return resp.status, await resp.text()

        assert await get("/v1/logs/stdout", token("stdout")) == (200, "stdout-of-ok\n")
        assert (await get("/v1/logs/stderr", token("stdout")))[0] == 403  # names stdout only
        assert (await get("/v1/logs/stdout", token("stdout", op="read")))[0] == 403  # a read grant is not one
        assert (await get("/v1/files/.dagon/stdout", token(".dagon/stdout", op="read")))[0] == 403
        assert (await get("/v1/logs/command", token("command")))[0] == 403  # only stdout and stderr
        unbound = mint_grant(signer, Grant(run, "ok", 1, "stdout", "client", "logs", time.time() + 60, b"\x01" * 32))
        assert (await get("/v1/logs/stdout", unbound))[0] == 403  # bound to a key it cannot prove
