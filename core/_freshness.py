"""Which agent reports are fresh: replayed, reordered and retained-but-dead reports are ignored.

An agent's status and heartbeats are signed, but a signature says who, not when: a
captured ``Offline(shutdown)`` replayed later would mark a live agent down, an old
``Announce`` would roll back its data URL, old heartbeats would keep a dead agent
online, and a dead agent's retained announce would make it look online at every
coordinator start. Each report therefore carries its agent's *session* (random, new at
every agent start) and the signed envelope timestamp; heartbeats also a sequence number.
This gate, sans-IO with the clock passed in, keeps per agent the session it confirmed
and decides:

* ``Announce``: an agent is online only once it *answered a challenge*: the coordinator
  asks it to announce itself (a signed ``Control("announce")`` carrying a random nonce)
  and accepts the announce that carries that nonce back, signed by the agent's key. Any
  other announce — the agent's own at its start, a retained one at a coordinator start,
  a replayed one — only prompts that question (at once for a session not asked about
  yet, then at most once per ``ask_every``). Only the live agent can answer, so no
  retained or replayed message, however recent, makes a dead agent online. Answers older
  than the last accepted announce, or than ``stale_after``, are ignored.
* ``Heartbeat``: of the confirmed session, with a higher sequence number and a timestamp
  within ``stale_after`` of now, or ignored. A heartbeat of a session not confirmed (the
  coordinator restarted and the retained status was cleared or replaced) asks the agent
  to announce itself — nothing at start depends on retained messages anyone may overwrite.
* ``Offline``: of the confirmed session (its Last Will or its shutdown), or ignored.

Memory: one small record per *enrolled* agent (reports of others never get here: they
fail the signature check first), holding at most :data:`MAX_CHALLENGES` nonces.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from dagon.protocol import AgentId, Announce, Heartbeat, Message, Offline

__all__ = ["MAX_CHALLENGES", "ReportGate", "Verdict", "report_verdict"]

MAX_CHALLENGES: Final = 4  # nonces of one agent still answerable (a late answer to an earlier question counts)
_FAST_ASK: Final = 1.0  # seconds between two questions prompted by different sessions (an agent restarting)


class Verdict(enum.Enum):
    ACCEPT = "accept"  # act on it
    STALE = "stale"  # ignore it
    ASK = "ask"  # ignore it and ask the agent to announce itself again (see ReportGate.challenge)


@dataclass(slots=True)
class _Agent:
    session: str = ""  # the session of the last accepted (answering) announce
    announced_ts: float = float("-inf")
    seq: int = -1
    dormant: bool = True  # not online: never confirmed, or its session went offline
    asked_at: float = float("-inf")
    asked_session: str = ""  # the session whose report prompted the last question
    challenges: dict[str, float] = field(default_factory=dict)  # nonce -> when asked


class ReportGate:
    """Freshness of agent reports (see the module docstring).

    Args:
        stale_after: seconds after which an announce or a heartbeat is too old to show that
            its agent is alive (the coordinator's heartbeat TTL, at least the freshness window).
        ask_every: seconds between two questions to the same agent prompted by the same session.
        nonce: makes challenge nonces (unguessable; replaceable in tests).
    """

    def __init__(
        self, *, stale_after: float, ask_every: float = 10.0, nonce: Callable[[], str] = lambda: secrets.token_hex(16)
    ) -> None:
        if stale_after <= 0:
            raise ValueError(f"stale_after must be positive, got {stale_after}")
        self.stale_after = stale_after
        self.ask_every = ask_every
        self._nonce = nonce
        self._agents: dict[AgentId, _Agent] = {}
        self.ignored = 0

    def _ask(self, state: _Agent, session: str, now: float) -> Verdict:
        self.ignored += 1
        live = {n: at for n, at in state.challenges.items() if now - at <= self.stale_after}
        state.challenges = live
        since = now - state.asked_at
        if live and since < self.ask_every and (session == state.asked_session or since < _FAST_ASK):
            return Verdict.STALE  # asked already: the answer is on its way, or nobody is there
        nonce = self._nonce()
        live[nonce] = now
        while len(live) > MAX_CHALLENGES:
            del live[next(iter(live))]
        state.asked_at = now
        state.asked_session = session
        return Verdict.ASK

    def challenge(self, agent: str) -> str:
        """The nonce of the latest question to ``agent`` ("" if none is open)."""
        state = self._agents.get(AgentId(agent))
        return next(reversed(state.challenges), "") if state is not None else ""

    def announce(self, msg: Announce, ts: float, now: float) -> Verdict:
        state = self._agents.setdefault(msg.agent, _Agent())
        if ts <= state.announced_ts:
            self.ignored += 1
            return Verdict.STALE
        if msg.answer and msg.answer in state.challenges and now - ts <= self.stale_after:
            state.announced_ts = ts
            state.session = msg.session
            state.seq = -1
            state.dormant = False
            state.challenges.clear()
            return Verdict.ACCEPT
        if not state.dormant and msg.session == state.session:
            self.ignored += 1  # the online agent's own announce again (re-published, or replayed)
            return Verdict.STALE
        return self._ask(state, msg.session, now)

    def heartbeat(self, msg: Heartbeat, ts: float, now: float) -> Verdict:
        state = self._agents.get(msg.agent)
        if now - ts > self.stale_after or (state is not None and msg.session == state.session and msg.seq <= state.seq):
            self.ignored += 1
            return Verdict.STALE
        if state is None or state.dormant or msg.session != state.session:
            return self._ask(state or self._agents.setdefault(msg.agent, _Agent()), msg.session, now)
        state.seq = msg.seq
        return Verdict.ACCEPT

    def offline(self, msg: Offline, ts: float, now: float) -> Verdict:
        state = self._agents.get(msg.agent)
        if state is None or msg.session != state.session or ts < state.announced_ts - self.stale_after:
            self.ignored += 1
            return Verdict.STALE
        state.dormant = True
        return Verdict.ACCEPT

    def questioned(self, now: float, within: float = 5.0) -> int:
        """Agents asked to prove themselves within the last ``within`` s that have not answered yet
        (just started, or their answer is on its way; a dead agent's retained announce too)."""
        return sum(1 for a in self._agents.values() if a.dormant and a.challenges and now - a.asked_at <= within)

    def online(self, agent: str) -> bool:
        """Whether ``agent`` answered a challenge and its session has not gone offline since."""
        state = self._agents.get(AgentId(agent))
        return state is not None and not state.dormant


def report_verdict(gate: ReportGate, msg: Message, ts: float, now: float) -> Verdict:
    """The gate's verdict for any message on an agent's status or telemetry topic (telemetry
    samples and the like are not about liveness: accepted as they are)."""
    if isinstance(msg, Announce):
        return gate.announce(msg, ts, now)
    if isinstance(msg, Heartbeat):
        return gate.heartbeat(msg, ts, now)
    if isinstance(msg, Offline):
        return gate.offline(msg, ts, now)
    return Verdict.ACCEPT
