"""The engine's per-run and per-task state: mutable, owned by :class:`~dagon.core.Engine`.

Only the engine (and its helpers in ``_linking``, ``_recovery``, ``_gc``) changes
these; everyone else reads them — results (``dagon.core._results``) and listeners
(``dagon.core._listeners``) get frozen copies instead.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from dagon.core._attempts import PastAttempt
from dagon.core._model import Graph, Task, Workflow
from dagon.core._states import RunState, TaskState
from dagon.protocol import AgentId, RunId, TaskResult

__all__ = ["RunView", "TaskView"]

_S = TaskState


class TaskView:
    """Mutable per-task run state (read-only for callers)."""

    __slots__ = (
        "agent",
        "attempt",
        "cause",
        "dependents",
        "dispatched_at",
        "exit_code",
        "finished_at",
        "host",
        "inherited",
        "lost",
        "restored",
        "result",
        "run",
        "spec",
        "started_at",
        "state",
        "waiting",
        "workdir",
    )

    def __init__(self, spec: Task, run: RunView) -> None:
        self.spec = spec
        self.run = run
        self.state = _S.PENDING
        self.waiting = 0
        self.dependents: list[TaskView] = []
        self.attempt = 0
        self.agent: AgentId | None = None
        self.host = ""
        self.workdir = ""
        self.result: TaskResult | None = None  # None also when the result said nothing more (see _keep)
        self.exit_code: int | None = None
        self.dispatched_at = 0.0
        self.cause = ""
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.lost = 0
        self.restored = False  # its success was read from the run store, not seen by this engine
        self.inherited = False  # its current attempt was dispatched before this engine started

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(eq=False)
class RunView:
    id: RunId
    workflow: Workflow
    graph: Graph
    submitted_at: float
    tasks: dict[str, TaskView] = field(default_factory=dict)
    counts: Counter[TaskState] = field(default_factory=Counter)
    unfinished: int = 0
    state: RunState = RunState.RUNNING
    cancelled: bool = False
    finished_at: float | None = None
    cause: str = ""
    # (workflow, task) -> the producing task of another run this run's tasks reference
    external: dict[tuple[str, str], TaskView] = field(default_factory=dict)
    # agent -> peak bytes of this run's output manifests in its scratch (see core/_scratch.py)
    scratch_peak: dict[str, int] = field(default_factory=dict)
    # task -> its earlier attempts and why they did not count, for tasks that ran more than once
    # only, latest retried last (see dagon.core._attempts; recorded by the run feed)
    retries: dict[str, list[PastAttempt]] = field(default_factory=dict)
