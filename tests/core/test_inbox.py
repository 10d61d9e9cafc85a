"""Tier 1: the coordinator's inbox routing, a pure function of topic and envelope."""

from __future__ import annotations

import pytest

from dagon.core import AgentOffline, AgentSeen, RunCancelRequested, TaskFinished, TaskRejected
from dagon.core._inbox import (
    CancelRequested,
    Deduplicator,
    ResultsHeld,
    ResultsReceived,
    SubmitRequested,
    agent_topic,
    route,
)
from dagon.protocol import (
    Ack,
    AgentId,
    CancelRun,
    Envelope,
    Heartbeat,
    Message,
    Offline,
    ProtocolError,
    Rejection,
    ResultStatus,
    RunId,
    SubmitRun,
    TaskName,
    TaskRef,
    TaskResult,
    TasksFinished,
    topics,
)

A = AgentId("a/1")  # escaped in topics
R = RunId("run-1")
INBOX = topics.coordinator_inbox("main")


def env(message: Message) -> Envelope:
    return Envelope(message=message, id="m1", ts=0.0, src="test")


def result(task: str, attempt: int = 1) -> TaskResult:
    return TaskResult(R, TaskName(task), attempt, ResultStatus.SUCCEEDED, 0, 1.0, 2.0)


def test_agent_topics_name_their_agent_unescaped() -> None:
    assert agent_topic(topics.agent_status(A)) == (A, "status")
    assert agent_topic(topics.agent_telemetry(A)) == (A, "telemetry")
    assert agent_topic(INBOX) is None


def test_finished_results_feed_the_engine_then_are_acknowledged() -> None:
    events = route(INBOX, env(TasksFinished(agent=A, results=(result("x"), result("y", 2)))))
    assert [type(e) for e in events] == [TaskFinished, TaskFinished, ResultsReceived]
    assert events[-1] == ResultsReceived(A, (TaskRef(R, TaskName("x"), 1), TaskRef(R, TaskName("y"), 2)))


def test_a_heartbeat_listing_held_results_acknowledges_stale_ones_before_the_engine_hears_it() -> None:
    held = (TaskRef(R, TaskName("x"), 1),)
    beat = Heartbeat(agent=A, seq=1, running=0, free_slots=4, held=held, complete=True)
    events = route(topics.agent_telemetry(A), env(beat))
    assert events == [ResultsHeld(A, held), AgentSeen(A, held=0, refs=frozenset(held))]
    incomplete = Heartbeat(agent=A, seq=2, running=1, free_slots=3)
    assert route(topics.agent_telemetry(A), env(incomplete)) == [AgentSeen(A, held=1, refs=None)]


def test_an_agent_cannot_speak_for_another_on_its_topics() -> None:
    with pytest.raises(ProtocolError, match="not accepted"):
        route(topics.agent_status(A), env(Offline(agent=AgentId("b"))))
    assert route(topics.agent_status(A), env(Offline(agent=A))) == [AgentOffline(A, "offline")]


def test_messages_on_the_wrong_topic_are_refused() -> None:
    with pytest.raises(ProtocolError, match="not accepted on the coordinator inbox"):
        route(INBOX, env(Offline(agent=A)))
    with pytest.raises(ProtocolError, match="not accepted on"):
        route(topics.agent_telemetry(A), env(Offline(agent=A)))


def test_client_requests_and_rejections() -> None:
    submit = SubmitRun(run=R, workflow={"name": "w", "tasks": []})
    assert route(INBOX, env(submit)) == [SubmitRequested(submit)]
    assert route(INBOX, env(CancelRun(run=R))) == [CancelRequested(RunCancelRequested(R, "cancelled by client"))]
    rejection = Rejection(task=TaskRef(R, TaskName("x"), 1), reason="full")
    assert route(INBOX, env(Ack(agent=A, accepted=0, rejected=(rejection,)))) == [TaskRejected(A, rejection)]


def test_duplicates_are_recognised_and_memory_stays_bounded() -> None:
    seen = Deduplicator()
    assert seen.first("a") and not seen.first("a")
    for i in range(60_000):
        seen.first(str(i))
    assert len(seen._seen) <= 50_000
    assert seen.first("a")  # long forgotten
