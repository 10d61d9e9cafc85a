"""The coordinator's inbox: what a decoded message means, as a list of events.

:func:`route` is pure — no engine, no clock, no I/O — so what each message on
each topic does is read (and tested) here in one ``match``. The coordinator
applies the events: engine events go to :meth:`Engine.handle`; the others here
(``Inbox*``) are for the coordinator itself.

Topics (see ``dagon.protocol.topics``):
    * ``…/agents/<id>/status`` — ``Announce`` / ``Offline`` of that agent;
    * ``…/agents/<id>/telemetry`` — ``Heartbeat`` / ``Telemetry`` of that agent;
    * ``…/coordinator/<id>/inbox`` — reports from agents, requests from clients
      (deduplicated by envelope id: QoS 1 is at-least-once).
"""

from __future__ import annotations

from dataclasses import dataclass

from dagon.core._events import (
    AgentAnnounced,
    AgentOffline,
    AgentSeen,
    Event,
    RunCancelRequested,
    TaskFinished,
    TaskRejected,
    TaskStarted,
)
from dagon.protocol import (
    Ack,
    AgentId,
    Announce,
    CancelRun,
    Envelope,
    Heartbeat,
    LogsRequest,
    Offline,
    ProtocolError,
    ResumeRun,
    RunId,
    SubmitRun,
    TaskProgress,
    TaskRef,
    TasksFinished,
    TasksStarted,
    Telemetry,
    TimeQuery,
    topics,
)

__all__ = [
    "CancelRequested",
    "Deduplicator",
    "InboxEvent",
    "KeyAnnounced",
    "LogsRequested",
    "Progress",
    "ResultsHeld",
    "ResultsReceived",
    "ResumeRequested",
    "Routed",
    "SubmitRequested",
    "TelemetryReceived",
    "TimeAsked",
    "agent_topic",
    "route",
]


@dataclass(frozen=True, slots=True)
class KeyAnnounced:
    """An agent announced its signing key (pin it before anything else it says)."""

    agent: AgentId
    key: bytes


@dataclass(frozen=True, slots=True)
class ResultsHeld:
    """A heartbeat lists the results an agent still holds unacknowledged."""

    agent: AgentId
    held: tuple[TaskRef, ...]


@dataclass(frozen=True, slots=True)
class ResultsReceived:
    """Results arrived: acknowledge them (``ResultsStored``) once they are persisted."""

    agent: AgentId
    refs: tuple[TaskRef, ...]


@dataclass(frozen=True, slots=True)
class TelemetryReceived:
    sample: Telemetry


@dataclass(frozen=True, slots=True)
class Progress:
    """An informational note about a running attempt (no state change)."""

    report: TaskProgress


@dataclass(frozen=True, slots=True)
class SubmitRequested:
    request: SubmitRun


@dataclass(frozen=True, slots=True)
class ResumeRequested:
    run: RunId


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """A client asks to cancel a run (ignored if the run is not known here)."""

    cancel: RunCancelRequested


@dataclass(frozen=True, slots=True)
class LogsRequested:
    """A client asks for a grant to read a task attempt's log (``dagon.core._logdesk``)."""

    request: LogsRequest


@dataclass(frozen=True, slots=True)
class TimeAsked:
    """An agent asks for the coordinator's clock (answered at once, see ``TimeQuery``)."""

    agent: AgentId
    nonce: str


InboxEvent = (
    KeyAnnounced
    | ResultsHeld
    | ResultsReceived
    | TelemetryReceived
    | Progress
    | SubmitRequested
    | ResumeRequested
    | CancelRequested
    | LogsRequested
    | TimeAsked
)
Routed = Event | InboxEvent


def agent_topic(topic: str) -> tuple[AgentId, str] | None:
    """``(agent, "status" | "telemetry" | …)`` for a per-agent topic, else None."""
    found = topics.agent_of(topic)
    return (AgentId(found[0]), found[1]) if found is not None else None


def route(topic: str, envelope: Envelope) -> list[Routed]:
    """The events a message received on ``topic`` stands for, in the order to apply them.

    Raises ProtocolError for a message that has no business on its topic (including
    an agent speaking for another agent on a per-agent topic).
    """
    msg = envelope.message
    on_agent_topic = agent_topic(topic)
    if on_agent_topic is not None:
        agent, kind = on_agent_topic
        match kind, msg:
            case "status", Announce() if msg.agent == agent:
                return [KeyAnnounced(agent, msg.key), AgentAnnounced(agent, msg.capabilities)]
            case "status", Offline() if msg.agent == agent:
                return [AgentOffline(agent, msg.reason or "offline")]
            case "telemetry", Heartbeat() if msg.agent == agent:
                refs = frozenset(msg.held) if msg.complete else None
                held: list[Routed] = [ResultsHeld(agent, msg.held)] if msg.held else []
                routed: list[Routed] = [*held, AgentSeen(agent, held=msg.running, refs=refs)]
                if msg.telemetry is not None:  # the sample riding on the heartbeat
                    if msg.telemetry.agent != agent:
                        raise ProtocolError(
                            f"heartbeat of {agent} carries telemetry of {msg.telemetry.agent}", reason="unexpected"
                        )
                    routed.append(TelemetryReceived(msg.telemetry))
                return routed
            case "telemetry", Telemetry() if msg.agent == agent:
                return [TelemetryReceived(msg)]
        raise ProtocolError(f"{msg.OP} is not accepted on {topic}", reason="unexpected")
    match msg:
        case TasksFinished(agent=agent, results=results):
            finished: list[Routed] = [TaskFinished(agent, result) for result in results]
            refs_ = tuple(TaskRef(r.run, r.task, r.attempt) for r in results)
            return [*finished, ResultsReceived(agent, refs_)]
        case TasksStarted(agent=agent, tasks=started):
            return [TaskStarted(agent, TaskRef(s.run, s.task, s.attempt), s.started_at, s.workdir) for s in started]
        case Ack(agent=agent, rejected=rejected):
            return [TaskRejected(agent, rejection) for rejection in rejected]
        case TaskProgress():
            return [Progress(msg)]
        case SubmitRun():
            return [SubmitRequested(msg)]
        case ResumeRun():
            return [ResumeRequested(msg.run)]
        case CancelRun():
            return [CancelRequested(RunCancelRequested(msg.run, msg.reason or "cancelled by client"))]
        case LogsRequest():
            return [LogsRequested(msg)]
        case TimeQuery():
            return [TimeAsked(msg.agent, msg.nonce)]
    raise ProtocolError(f"{msg.OP} is not accepted on the coordinator inbox", reason="unexpected")


class Deduplicator:
    """Envelope ids seen recently (the last 25,000 to 50,000)."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[str, None] = {}

    def first(self, msg_id: str) -> bool:
        """Whether ``msg_id`` is new (and remember it)."""
        seen = self._seen
        if msg_id in seen:
            return False
        seen[msg_id] = None
        if len(seen) > 50_000:
            for key in list(seen)[:25_000]:
                del seen[key]
        return True
