"""Freshness of agent reports: replayed, reordered and retained-but-dead reports are ignored;
an agent is online only once it answered a challenge."""

from __future__ import annotations

import itertools

from dagon.core._freshness import MAX_CHALLENGES, ReportGate, Verdict
from dagon.protocol import AgentId, Announce, Heartbeat, Offline

from ._sim import caps

A = AgentId("a1")


def gate(**kwargs: float) -> ReportGate:
    counter = itertools.count()
    return ReportGate(stale_after=120, nonce=lambda: f"n{next(counter)}", **kwargs)


def announce(session: str = "s1", answer: str = "") -> Announce:
    return Announce(A, caps(), session=session, answer=answer)


def beat(seq: int, session: str = "s1") -> Heartbeat:
    return Heartbeat(A, seq, 0, 2, session=session)


def online(g: ReportGate, session: str, ts: float) -> None:
    """The agent announces itself, is asked, and answers."""
    assert g.announce(announce(session), ts, ts) is Verdict.ASK
    assert g.announce(announce(session, g.challenge("a1")), ts + 0.1, ts + 0.1) is Verdict.ACCEPT
    assert g.online("a1")


def test_no_announce_makes_an_agent_online_unless_it_answers_a_challenge() -> None:
    g = gate()
    assert g.announce(announce(), 100.0, 100.0) is Verdict.ASK  # fresh, but it answers nothing
    assert not g.online("a1")
    assert g.challenge("a1") == "n0"
    assert g.announce(announce(answer="guess"), 100.5, 100.5) is Verdict.STALE  # a wrong nonce: asked already
    assert g.announce(announce(answer="n0"), 101.0, 101.0) is Verdict.ACCEPT
    assert g.online("a1") and g.challenge("a1") == ""  # answered: nothing open
    assert g.announce(announce(answer="n0"), 102.0, 102.0) is Verdict.STALE  # the answer again: already online


def test_a_dead_agents_recent_retained_announce_does_not_make_it_online() -> None:
    g = gate()
    assert g.announce(announce(), 99.0, 100.0) is Verdict.ASK  # retained one second ago: nobody answers
    for now in (101.0, 105.0, 109.0):
        assert g.announce(announce(), 99.0 + now - 100, now) is Verdict.STALE  # replays: asked already
        assert g.heartbeat(beat(int(now)), now, now) is Verdict.STALE
    assert g.announce(announce(), 110.5, 110.5) is Verdict.ASK  # once per ask_every
    assert not g.online("a1")
    assert g.announce(announce("s2"), 111.0, 111.0) is Verdict.STALE  # another session, but under a second
    assert g.announce(announce("s2"), 112.0, 112.0) is Verdict.ASK  # a restarted agent is asked at once
    assert g.announce(announce("s2", "n1"), 112.5, 112.5) is Verdict.ACCEPT  # an earlier question still counts


def test_an_older_announce_never_replaces_a_newer_one() -> None:
    g = gate()
    online(g, "s2", 100.0)
    assert g.announce(announce("s1"), 50.0, 101.0) is Verdict.STALE  # replayed: rolls nothing back
    assert g.announce(announce("s2"), 103.0, 103.0) is Verdict.STALE  # its own again: heartbeats tell
    assert g.announce(announce("s3"), 104.0, 104.0) is Verdict.ASK  # a new start: asked at once
    assert g.online("a1")  # until the new session answers, the old one stands


def test_an_answer_must_be_recent() -> None:
    g = gate()
    assert g.announce(announce(), 100.0, 100.0) is Verdict.ASK
    assert g.announce(announce(answer="n0"), 101.0, 300.0) is Verdict.ASK  # 199 s old: asked anew
    assert not g.online("a1")
    assert g.announce(announce(answer="n0"), 301.0, 301.0) is Verdict.STALE  # the old question is closed


def test_open_challenges_are_bounded() -> None:
    g = gate(ask_every=0.0)
    for i in range(50):
        assert g.announce(announce(f"s{i}"), 100.0 + 2 * i, 100.0 + 2 * i) is Verdict.ASK
    assert g.announce(announce("x", "n0"), 201.0, 201.0) is Verdict.ASK  # forgotten (and asked again: n50)
    assert not g.online("a1")
    assert g.announce(announce("x", f"n{51 - MAX_CHALLENGES}"), 201.5, 201.5) is Verdict.ACCEPT


def test_a_replayed_offline_of_an_earlier_session_is_ignored() -> None:
    g = gate()
    online(g, "s2", 100.0)
    assert g.offline(Offline(A, "shutdown", session="s1"), 90.0, 101.0) is Verdict.STALE
    assert g.offline(Offline(A, "connection lost", session="s2"), 99.0, 150.0) is Verdict.ACCEPT  # its Will
    assert not g.online("a1")


def test_heartbeats_must_be_new_of_this_session_and_recent() -> None:
    g = gate()
    online(g, "s1", 100.0)
    assert g.heartbeat(beat(1), 101.0, 101.0) is Verdict.ACCEPT
    assert g.heartbeat(beat(1), 101.0, 102.0) is Verdict.STALE  # replayed
    assert g.heartbeat(beat(2), 102.0, 500.0) is Verdict.STALE  # too old to prove anything
    assert g.heartbeat(beat(3, "s0"), 103.0, 103.0) is Verdict.ASK  # another session: announce again
    assert g.heartbeat(beat(4, "s0"), 104.0, 104.0) is Verdict.STALE  # asked once per interval


def test_an_old_retained_announce_is_not_online_until_the_agent_answers() -> None:
    g = gate()
    assert g.announce(announce(), 0.0, 1000.0) is Verdict.ASK  # retained for 1000 s: maybe dead
    assert not g.online("a1")
    assert g.heartbeat(beat(7), 999.0, 1000.5) is Verdict.STALE  # asked already
    assert g.announce(announce(answer="n0"), 1001.0, 1001.0) is Verdict.ACCEPT  # it answered
    assert g.online("a1")


def test_a_heartbeat_of_an_unknown_agent_asks_it_to_announce() -> None:
    g = gate()
    assert g.heartbeat(beat(5), 100.0, 100.0) is Verdict.ASK  # its retained status was cleared
    assert g.challenge("a1") == "n0"
