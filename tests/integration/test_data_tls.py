"""The data server over HTTPS: peers verify its certificate against the CA they were given."""

from __future__ import annotations

import contextlib
from pathlib import Path

from _keys import coordinator_security

import dagon
from dagon._brokerconfig import generate_broker_config
from dagon.core import Coordinator, RunResult, RunState
from dagon.protocol.transport import MemoryHub

from ._stack import hub_agent as agent


async def run(tmp: Path, consumer_flags: dict[str, object]) -> tuple[RunResult, str]:
    pki = generate_broker_config(tmp / "pki", agents=["unused"], server_names=["127.0.0.1"])
    hub = MemoryHub()
    wf = dagon.Workflow("tls")
    wf.shell("make", "echo secret-ish > data.txt", agent="a")
    wf.shell("use", "cat workflow:///make/data.txt > got.txt", agent="b")
    async with contextlib.AsyncExitStack() as stack:
        coordinator = await stack.enter_async_context(
            Coordinator(connect=lambda will: hub.transport(will=will), coordinator_id="c", **coordinator_security())
        )
        producer = agent(
            hub, tmp, "a", host_id="one", data_tls_cert=str(tmp / "pki" / "server.crt"),
            data_tls_key=str(tmp / "pki" / "server.key"),
        )  # fmt: skip
        await stack.enter_async_context(producer)
        flags = {k: (str(pki.ca) if v == "CA" else v) for k, v in consumer_flags.items()}
        await stack.enter_async_context(agent(hub, tmp, "b", host_id="two", **flags))
        await coordinator.wait_for_agents(2)
        return await coordinator.wait(await coordinator.submit(wf)), producer.capabilities.data_url


async def test_pull_over_https_with_the_ca(tmp_path: Path) -> None:
    result, url = await run(tmp_path, {"data_tls_ca": "CA"})
    assert url.startswith("https://127.0.0.1:")
    assert result.state is RunState.SUCCEEDED, result.cause
    assert (Path(result["use"].workdir) / "got.txt").read_text() == "secret-ish\n"


async def test_an_unknown_certificate_is_refused(tmp_path: Path) -> None:
    result, _ = await run(tmp_path, {})
    assert result.state is RunState.FAILED
    assert "certificate verify failed" in result["use"].cause
