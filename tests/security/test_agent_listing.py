"""Issue 15 (the display gap): `dagon agents` never lists an agent the coordinator does not admit
as an online worker. Real `dagon coordinator` and `dagon-agent` processes on a real Mosquitto."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from dagon._keys import agent_signer
from dagon.protocol import fingerprint

from ._deploy import DAGON, ROOT, Deployment, _environ, until

pytestmark = pytest.mark.mosquitto


def rows(out: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert out.returncode == 0, out.stderr
    return {row["agent"]: row for row in json.loads(out.stdout)}


async def test_an_agent_that_is_not_admitted_is_listed_as_such_never_online(deployment: Deployment) -> None:
    deployment.start_coordinator()
    deployment.start_agent("edge")
    deployment.start_agent("newcomer", admit=False)  # up, announcing, refused by the coordinator
    await deployment.wait_log("(untrusted)")
    listed: dict[str, dict[str, Any]] = {}

    def both_listed() -> bool:
        listed.update(rows(deployment.dagon("agents", "--json", "--broker", deployment.url)))
        return listed.get("edge", {}).get("free_slots") is not None and "newcomer" in listed

    await until(both_listed, within=30, what="edge (with the coordinator's view) and newcomer in `dagon agents`")
    edge, newcomer = listed["edge"], listed["newcomer"]
    assert (edge["admitted"], edge["online"], edge["free_slots"], edge["coordinator"]) == (True, True, 2, "main")
    assert (newcomer["admitted"], newcomer["online"]) == (False, False)
    key = fingerprint(agent_signer(deployment.agent_home("newcomer")).public_key)
    assert newcomer["fingerprint"] == key and "dagon agents approve newcomer" in newcomer["reason"]

    # The table a person reads: one online, one waiting, and what to do about it.
    table = deployment.dagon("agents", "--broker", deployment.url)
    assert table.returncode == 0, table.stderr
    assert "1 agent(s) online, 1 not admitted" in table.stdout
    (newcomer_line,) = [line for line in table.stdout.splitlines() if line.startswith(("│ newcomer", "┃ newcomer"))]
    assert "not admitted" in newcomer_line and "online" not in newcomer_line
    assert f"newcomer is not admitted (key {key})" in table.stdout
    assert "`dagon agents approve newcomer`" in table.stdout

    # From another machine (a home with no enrolments), the coordinator's documents still tell.
    elsewhere = deployment.tmp / "laptop"
    remote = subprocess.run(
        [*DAGON, "agents", "--json", "--broker", deployment.url], capture_output=True, text=True, timeout=60,
        env=_environ(elsewhere), cwd=ROOT, check=False,
    )  # fmt: skip
    seen = rows(remote)
    assert (seen["edge"]["admitted"], seen["edge"]["online"]) == (True, True)
    assert (seen["newcomer"]["admitted"], seen["newcomer"]["online"]) == (False, False)

    # Approved: listed online at once (this home's enrolment), and the coordinator agrees.
    approved = deployment.dagon("agents", "approve", "newcomer", "--yes", "--broker", deployment.url)
    assert approved.returncode == 0, approved.stderr

    def newcomer_online() -> bool:
        found = rows(deployment.dagon("agents", "--json", "--broker", deployment.url))["newcomer"]
        return found["admitted"] is True and found["online"] is True and found.get("coordinator") == "main"

    await until(newcomer_online, within=40, what="newcomer admitted and online in the coordinator's view")
