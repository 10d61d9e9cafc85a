"""Local staging of workflow:// inputs, end to end through a real Agent."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
from _keys import COORDINATOR

from dagon.agent import Agent
from dagon.protocol import AgentId, Grant, ResultStatus, Signer, StageInput, TaskName, TaskResult, mint_grant
from dagon.protocol.transport import MemoryHub

from ._support import AGENT, FakeCoordinator, assign, running_agent


async def produce(coord: FakeCoordinator, command: str) -> TaskResult:
    await coord.assign(assign("A", command))
    result = (await coord.results(1))["A"]
    assert result.status is ResultStatus.SUCCEEDED, result
    return result


def ref(agent: Agent, producer: TaskResult, path: str, *, host: str | None = None) -> StageInput:
    return StageInput(
        ref=f"workflow:///A/{path}",
        workflow="wf",
        task=TaskName("A"),
        path=path,
        source_agent=AgentId(AGENT),
        source_host=agent.capabilities.host_id if host is None else host,
        source_dir=producer.workdir,
        source_run=producer.run,
        source_attempt=producer.attempt,
    )


@pytest.mark.parametrize("mode", ["hardlink", "symlink", "copy"])
async def test_staged_input_is_rewritten_in_the_command(hub: MemoryHub, tmp_path: Path, mode: str) -> None:
    async with running_agent(hub, tmp_path) as (agent, coord):
        a = await produce(coord, "echo from-A > out.txt")
        await coord.assign(
            assign("B", "cat workflow:///A/out.txt > b.txt", inputs=(ref(agent, a, "out.txt"),), stage_mode=mode)
        )
        b = (await coord.results(1))["B"]
    assert b.status is ResultStatus.SUCCEEDED, b.error
    assert (Path(b.workdir) / "b.txt").read_text() == "from-A\n"
    staged = Path(b.workdir) / ".dagon" / "inputs" / "wf" / "A" / "out.txt"
    command = (Path(b.workdir) / ".dagon" / "command").read_text()
    assert command == f"cat {staged} > b.txt"
    source = Path(a.workdir) / "out.txt"
    # A process task always gets its own file (no link it could write through into A's output).
    assert not staged.is_symlink()
    assert os.stat(staged).st_ino != os.stat(source).st_ino
    assert [o.path for o in b.outputs] == ["b.txt"]  # staged inputs are not outputs


async def test_glob_input_is_expanded_by_the_shell(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path, stage_mode="copy") as (agent, coord):
        a = await produce(coord, "mkdir out && echo 1 > out/x.csv && echo 2 > out/y.csv && echo no > out/z.txt")
        await coord.assign(assign("B", "cat workflow:///A/out/*.csv > all.csv", inputs=(ref(agent, a, "out/*.csv"),)))
        b = (await coord.results(1))["B"]
    assert b.status is ResultStatus.SUCCEEDED, b.error
    assert (Path(b.workdir) / "all.csv").read_text() == "1\n2\n"


async def test_python_task_arguments_are_rewritten(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path) as (agent, coord):
        a = await produce(coord, "echo hi > out.txt")
        await coord.assign(
            assign(
                "B",
                "dagon.agent.builtins:echo",
                runtime="python",
                args=(["workflow:///A/out.txt"],),
                inputs=(ref(agent, a, "out.txt"),),
            )
        )
        b = (await coord.results(1))["B"]
    [path] = b.value
    assert path.startswith(b.workdir)
    with open(path) as staged:
        assert staged.read() == "hi\n"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../x", "escapes the producer's directory"),
        ("/etc/passwd", "escapes the producer's directory"),
        ("link", "points outside the producer's directory"),
        ("nope.txt", "input workflow:///A/nope.txt: no such file in A's output"),
    ],
)
async def test_unsafe_or_missing_inputs_give_an_error_result(
    hub: MemoryHub, tmp_path: Path, path: str, message: str
) -> None:
    (tmp_path / "secret").write_text("s3cret")
    async with running_agent(hub, tmp_path) as (agent, coord):
        a = await produce(coord, f"ln -s {tmp_path / 'secret'} link")
        await coord.assign(assign("B", f"cat workflow:///A/{path}", inputs=(ref(agent, a, path),)))
        b = (await coord.results(1))["B"]
    assert b.status is ResultStatus.ERROR
    assert message in b.error and f"workflow:///A/{path}" in b.error
    assert not list((Path(b.workdir) / ".dagon" / "inputs").rglob("secret"))


async def test_input_from_another_host_is_pulled_with_a_grant(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path, slots=4) as (agent, coord):
        a = await produce(coord, "mkdir out && head -c 300000 /dev/urandom > out/big.bin && echo x > out/x.txt")
        remote = ref(agent, a, "out", host="other")
        # no data server known for the producer: a clear error
        await coord.assign(assign("B", "true", inputs=(remote,)))
        # with the producer's URL and a grant signed by the coordinator the agent trusts: pulled over HTTP
        grant = Grant("r1", "A", 1, "out", AGENT, "read", time.time() + 60)
        good = dataclasses.replace(remote, url=agent.capabilities.data_url, token=mint_grant(COORDINATOR, grant))
        await coord.assign(assign("C", f"d=workflow:///A/out; cmp $d/big.bin {a.workdir}/out/big.bin", inputs=(good,)))
        # the same with a grant signed by a key the producer does not trust
        forged = dataclasses.replace(good, token=mint_grant(Signer.generate(), grant))
        await coord.assign(assign("D", "true", inputs=(forged,)))
        results = await coord.results(3)
    b, c, d = results["B"], results["C"], results["D"]
    assert b.status is ResultStatus.ERROR and "serves no data" in b.error
    assert c.status is ResultStatus.SUCCEEDED, c.error
    assert c.staging.startswith("pulled 2 file(s)") and "over http" in c.staging
    pulled = Path(c.workdir) / ".dagon" / "inputs" / "wf" / "A" / "out" / "big.bin"
    assert pulled.read_bytes() == (Path(a.workdir) / "out" / "big.bin").read_bytes() and not pulled.is_symlink()
    assert d.status is ResultStatus.ERROR and "403" in d.error and "unknown key" in d.error


async def test_an_unreachable_loopback_data_server_is_explained(hub: MemoryHub, tmp_path: Path) -> None:
    async with running_agent(hub, tmp_path) as (agent, coord):
        a = await produce(coord, "echo x > out.txt")
        grant = Grant("r1", "A", 1, "out.txt", AGENT, "read", time.time() + 60)
        remote = dataclasses.replace(
            ref(agent, a, "out.txt", host="elsewhere"), url="http://127.0.0.1:1", token=mint_grant(COORDINATOR, grant)
        )
        await coord.assign(assign("B", "cat workflow:///A/out.txt", inputs=(remote,)))
        b = (await coord.results(1))["B"]
    assert b.status is ResultStatus.ERROR
    assert "listens on loopback only" in b.error and "--data-host" in b.error
