"""The coordinator's public agent documents (sans-IO): when each is due, and what it says."""

from __future__ import annotations

import json

from dagon.core import AgentView
from dagon.core._agentstatus import CHANGE_INTERVAL, REFRESH_INTERVAL, AgentBoard
from dagon.protocol import AgentId, Capabilities, RunId, TaskName, TaskRef, topics

CAPS = Capabilities(
    hostname="pi", host_id="h", arch="aarch64", os="Linux", cpus=4, memory=1 << 30, runtimes=("process",),
    labels={"site": "lab"}, slots=2, version="1",
)  # fmt: skip


def docs(out: list[tuple[str, bytes]]) -> list[dict[str, object]]:
    return [json.loads(payload) for _, payload in out]


def test_online_changes_go_out_at_once_load_changes_throttled_last_seen_refreshed() -> None:
    board = AgentBoard(coordinator="main", key_of=lambda agent: b"")
    view = AgentView(AgentId("pi-1"), CAPS)
    agents = {view.id: view}
    view.online, view.last_seen = True, 100.0
    board.changed(view.id, True, "announced")
    out, more = board.due(agents, 100.0)
    assert [t for t, _ in out] == [topics.coordinator_agent("main", "pi-1")] and not more
    (doc,) = docs(out)
    assert (doc["online"], doc["admitted"], doc["free_slots"], doc["reason"]) == (True, True, 2, "announced")

    view.inflight[TaskRef(RunId("r"), TaskName("t"), 1)] = None  # type: ignore[assignment]
    out, more = board.due(agents, 100.2)  # too soon after the last look: later
    assert out == [] and more
    (doc,) = docs(board.due(agents, 100.0 + CHANGE_INTERVAL)[0])
    assert (doc["running"], doc["free_slots"]) == (1, 1)
    assert board.due(agents, 102.5) == ([], False)  # nothing changed
    view.last_seen = 130.0
    (doc,) = docs(board.due(agents, 101.0 + REFRESH_INTERVAL)[0])  # unchanged, but last_seen moves on
    assert doc["last_seen"] == 130.0

    view.online = False
    board.changed(view.id, False, "connection lost")
    (doc,) = docs(board.due(agents, 131.1)[0])  # at once, however recent the last look
    assert (doc["online"], doc["free_slots"], doc["reason"]) == (False, 0, "connection lost")
    assert board.due(agents, 131.1 + 2 * REFRESH_INTERVAL) == ([], False)  # an offline agent is not refreshed
    assert board.published() == [topics.coordinator_agent("main", "pi-1")]
