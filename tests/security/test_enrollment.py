"""Issue 15, attack 2: a broker client is not an agent until it is enrolled. Real processes,
real Mosquitto; the rogue is an MQTT client with a key of its own."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import aiohttp
import psutil
import pytest
from _broker import free_port

from dagon._keys import agent_signer, read_public_key
from dagon.protocol import (
    Announce,
    Codec,
    KeyRing,
    OutputFile,
    RunId,
    TaskAssignment,
    TaskName,
    fingerprint,
    raw_public_key,
    topics,
)
from dagon.protocol.transport import MqttTransport

from ._deploy import Deployment, retained, run_finished, task_results
from ._rogue import Rogue, capabilities, success

pytestmark = pytest.mark.mosquitto


async def test_strangers_squatters_and_sybils_get_nothing(deployment: Deployment) -> None:
    # before anyone is up: a squatter announces the real agent's id, a rogue its own, 1,000 sybils theirs (retained)
    squatter = Rogue(deployment.url, "edge")
    rogue = Rogue(deployment.url, "rogue")
    async with squatter.online(), rogue.online() as rogue_link:
        await sybils(deployment.url, range(1000), retain=True)
        metrics = free_port()
        deployment.start_coordinator("--metrics-port", str(metrics))
        await until_refused(metrics, 1002)  # the squatter's, the rogue's and every retained sybil's announce
        deployment.start_agent("edge")  # the real one, enrolled by the operator
        wf = deployment.workflow("plenty", [(f"t{i}", "echo real > out.txt", {}) for i in range(12)])
        run, out = deployment.submit(wf)
        assert out.returncode == 0, out.stderr + deployment.logs()
        results = await task_results(deployment.url, run)
        assert {doc["agent"] for doc in results.values()} == {"edge"}
        assert not rogue.received  # no command, no grant ever reached it
        # the squatter's announce never stood for "edge": the real agent ran every task
        # (a broker client can still read "edge"'s task topic: only the broker ACL prevents that)
        edge_scratch = str(deployment.agent_home("edge") / "scratch")
        assert all(doc["workdir"].startswith(edge_scratch) for doc in results.values())
        # issue 15: 5,000 sybils grew known_agents to 5,007 entries. Twice 5,000 now, to a running
        # coordinator: refused before decoding, they leave nothing behind, in memory or on disk.
        coordinator = psutil.Process(deployment.coordinator.pid if deployment.coordinator else 0)
        refused = await until_refused(metrics, 1002)
        await sybils(deployment.url, range(1000, 6000))
        refused = await until_refused(metrics, refused + 5000)
        after_first = coordinator.memory_info().rss
        await sybils(deployment.url, range(6000, 11000))
        refused = await until_refused(metrics, refused + 5000)
        grown = coordinator.memory_info().rss - after_first
        assert grown < 8 * 2**20, f"the coordinator grew by {grown / 2**20:.1f} MiB for 5,000 more sybils"
        # a fake success for one of the real tasks, signed by the rogue as itself and as "edge"
        for liar in (rogue, squatter):
            forged = success(_assignment_of(run, "t0"), stderr_tail="fake")
            await liar.finish(rogue_link, "main", forged)
        await until_refused(metrics, refused + 2)  # refused as untrusted (the log says so at most once a second)
        assert (await task_results(deployment.url, run))["t0"]["stderr_tail"] != "fake"
    known = (deployment.home / "keys" / "known_agents").read_text().splitlines()
    assert [line.split()[0] for line in known] == ["edge"]  # nothing lasting from 11,002 strangers
    assert deployment.logs().count("rejected message from") < 200  # rate-limited: no log flood either
    assert deployment.alive()
    listing = deployment.dagon("agents", "--json", "--broker", deployment.url)
    assert listing.returncode == 0, listing.stderr


async def sybils(url: str, ids: range, *, retain: bool = False) -> None:
    """An announce of ``sybil<i>`` for each ``i``, each with a key of its own, as fast as the broker
    takes them: from a loop of its own without asyncio's debug mode (which records a stack for every
    future: most of the flood's cost), as the attacker's own machine would."""

    async def flood() -> None:
        payloads = []
        for i in ids:
            sybil = Rogue(url, f"sybil{i}")
            key = raw_public_key(sybil.signer.public_key)
            message = Announce(agent=sybil.agent, capabilities=capabilities(), key=key)
            payloads.append((topics.agent_status(sybil.agent), sybil.codec.encode(message)))
        async with MqttTransport(url, client_id=f"sybils-{ids.start}") as link:
            for i in range(0, len(payloads), 500):  # 500 in flight at a time
                await asyncio.gather(*(link.begin_publish(t, p, retain=retain) for t, p in payloads[i : i + 500]))

    await asyncio.to_thread(asyncio.run, flood(), debug=False)


async def until_refused(metrics_port: int, count: int, *, within: float = 120) -> int:
    """The coordinator's count of messages refused as untrusted, once it reached ``count``."""
    found = 0

    async def scrape() -> int:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with contextlib.suppress(aiohttp.ClientError):
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                for line in (await response.text()).splitlines():
                    if line.startswith('dagon_protocol_rejections{reason="untrusted"}'):
                        return int(float(line.split()[-1]))
        return 0

    async with asyncio.timeout(within):
        while (found := await scrape()) < count:
            await asyncio.sleep(0.2)
    return found


def _assignment_of(run: str, task: str) -> TaskAssignment:

    return TaskAssignment(RunId(run), "plenty", TaskName(task), 1, "process", "true")


async def test_one_home_enrolls_itself(deployment: Deployment) -> None:
    """Zero setup on one machine: a coordinator and an agent sharing DAGON_HOME need no step."""
    deployment.start_coordinator()
    deployment.agent_home = lambda name: deployment.home  # type: ignore[method-assign]
    deployment.start_agent("local", admit=False)
    _, out = deployment.submit(deployment.workflow("local", [("A", "echo hi", {})]))
    assert out.returncode == 0, out.stderr + deployment.logs()
    assert not (deployment.home / "keys" / "known_agents").exists()  # nothing to record


async def test_a_host_id_claim_never_makes_another_agent_stage_a_local_path(deployment: Deployment) -> None:
    """A compromised *enrolled* agent claims the victim's host id and reports, as its producer's
    directory, the victim's directory of another run: the victim stages nothing from it."""
    deployment.start_coordinator()
    deployment.start_agent("edge")
    victim_wf = deployment.workflow("victim", [("S", "echo TOPSECRET > secret.txt", {})])
    victim_run, out = deployment.submit(victim_wf)
    assert out.returncode == 0, out.stderr
    secret_dir = (await task_results(deployment.url, victim_run))["S"]["workdir"]
    edge_caps = (
        Codec(sender="reader")
        .decode((await retained(deployment.url, topics.agent_status("edge")))[topics.agent_status("edge")])
        .message.capabilities  # type: ignore[attr-defined]
    )
    mallory_home = deployment.agent_home("mallory")
    mallory_home.mkdir()
    deployment.enroll_agent("mallory")  # enrolled once, compromised since
    coordinator_key = KeyRing([read_public_key(deployment.home / "keys" / "coordinator.pub")])
    mallory = Rogue(deployment.url, "mallory", signer=agent_signer(mallory_home), coordinator_keys=coordinator_key)
    caps = capabilities(host_id=edge_caps.host_id)
    async with mallory.online(caps) as link:
        await deployment.wait_log("agent mallory")
        wf = deployment.workflow(
            "attack",
            [("A", "true", {"agent": "mallory"}), ("B", "cat workflow:///A/secret.txt > got.txt", {"agent": "edge"})],
        )
        run, _ = deployment.submit(wf, wait=False)
        async with asyncio.timeout(30):
            while not mallory.assigned:
                await asyncio.sleep(0.05)
        (a,) = mallory.assigned
        digest = hashlib.sha256(b"TOPSECRET\n").hexdigest()
        lie = success(a, workdir=secret_dir, outputs=(OutputFile("secret.txt", 10, digest),))
        await mallory.finish(link, "main", lie)
        status = await run_finished(deployment.url, run)
    results = await task_results(deployment.url, run)
    assert status["state"] == "failed", status
    assert results["B"]["state"] == "failed"
    assert "is not the directory of 'A' attempt 1" in results["B"]["error"], results["B"]
    leaked = [p for p in (deployment.agent_home("edge") / "scratch").rglob("*") if p.is_file()]
    assert not [p for p in leaked if run in str(p) and b"TOPSECRET" in p.read_bytes()]


async def test_an_unenrolled_agent_works_once_approved(deployment: Deployment) -> None:
    deployment.start_coordinator()
    deployment.start_agent("newcomer", admit=False)  # obeys the coordinator, is not admitted by it
    await deployment.wait_log("(untrusted)")
    refused = deployment.dagon("agents", "approve", "newcomer", "--broker", deployment.url)
    assert refused.returncode != 0 and "--yes" in refused.stderr  # no terminal: it will not guess
    approved = deployment.dagon("agents", "approve", "newcomer", "--yes", "--broker", deployment.url)
    assert approved.returncode == 0, approved.stderr
    assert fingerprint(agent_signer(deployment.agent_home("newcomer")).public_key) in approved.stdout
    # the running coordinator admits it without a restart
    run, out = deployment.submit(deployment.workflow("welcome", [("A", "true", {"agent": "newcomer"})]))
    assert out.returncode == 0, out.stderr + deployment.logs()
    assert (await task_results(deployment.url, run))["A"]["agent"] == "newcomer"
    again = deployment.dagon("agents", "approve", "ghost", "--yes", "--broker", deployment.url)
    assert again.returncode != 0 and "no announce" in again.stderr
