"""The coordinator revokes a consumer attempt's data grants where they were sent once the attempt
ends, and again when that server comes back online (until the grants would have expired)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from dagon.core._datasources import DataSources
from dagon.core._engine import Engine
from dagon.core._events import AgentAnnounced
from dagon.protocol import (
    AgentId,
    ProtocolError,
    RunId,
    Signer,
    StageInput,
    TaskAssignment,
    TaskName,
    TaskRef,
    read_grant,
)

from ._sim import caps

SIGNER = Signer.generate()
KEYS = {SIGNER.key_id: SIGNER.public_key}


def spawn(coro: Coroutine[Any, Any, None], name: str) -> bool:
    coro.close()
    return False


def sources(tmp: Any = None) -> DataSources:
    engine = Engine(heartbeat_ttl=15)
    producer = dataclasses.replace(caps(host="h-prod"), data_url="http://127.0.0.1:1")
    hidden = dataclasses.replace(caps(host="h-hidden"), reachable=False)
    for agent, c in (("prod", producer), ("hidden", hidden), ("cons", caps(host="h-cons"))):
        engine.handle(AgentAnnounced(AgentId(agent), c), time.time())
    return DataSources(
        engine, signer=SIGNER, relay_dir=tmp, relay_host="127.0.0.1", relay_port=0, relay_url=None, relay_tls=None,
        checkpoint_dir=None, spawn=spawn,
    )  # fmt: skip


def assignment(task: str, attempt: int, *producers: str) -> TaskAssignment:
    inputs = tuple(
        StageInput(
            ref=f"workflow:///P{p}/f",
            workflow="w",
            task=TaskName(f"P{p}"),
            path="f",
            source_agent=AgentId(p),
            source_host=f"h-{p}",
            source_dir="",
            source_run=RunId("r1"),
            source_attempt=1,
        )
        for p in producers
    )
    return TaskAssignment(RunId("r1"), "w", TaskName(task), attempt, "process", "true", inputs=inputs)


def test_grants_name_their_attempt_and_are_revoked_where_they_were_sent(tmp_path: Any) -> None:
    data = sources(tmp_path / "relay")
    sent = data.with_grants(AgentId("cons"), assignment("B", 1, "prod", "hidden"))
    assert [read_grant(i.token, KEYS).consumer for i in sent.inputs] == [("r1", "B", 1)] * 2
    assert data.take_revocations() == []  # nothing ended yet
    data.with_grants(AgentId("cons"), assignment("C", 1, "prod"))
    data.attempt_ended(RunId("r1"), "B")
    ((agent, revoke),) = data.take_revocations()
    assert agent == "prod" and revoke.attempts == (TaskRef(RunId("r1"), TaskName("B"), 1),)
    assert revoke.until >= time.time() + data.grant_ttl - 5
    assert data.take_revocations() == []  # sent once …
    data.agent_online(AgentId("prod"))
    ((_, again),) = data.take_revocations()
    assert again.attempts == revoke.attempts  # … and again to an agent that comes back
    data.agent_online(AgentId("cons"))  # nothing was revoked there
    assert data.take_revocations() == []
    assert data.relay is not None
    relayed = sent.inputs[1]
    assert relayed.relay
    with pytest.raises(ProtocolError, match="revoked"):  # the relay refuses at once
        data._unrevoked(read_grant(relayed.token, KEYS))
    c_token = data.with_grants(AgentId("cons"), assignment("C", 2, "prod")).inputs[0].token
    assert data._unrevoked(read_grant(c_token, KEYS)).consumer == ("r1", "C", 2)  # still running


def test_revocations_are_forgotten_once_the_grants_expired() -> None:
    data = sources()
    data.grant_ttl = -1  # every grant is already expired
    data.with_grants(AgentId("cons"), assignment("B", 1, "prod"))
    data.attempt_ended(RunId("r1"), "B")
    assert data.take_revocations() == []
    data.attempt_ended(RunId("r1"), "X")  # prunes
    assert data._revoked == {} and data._granted == {}
