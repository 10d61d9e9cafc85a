"""Observers of a coordinator: run and task changes and agent telemetry, as they happen.

Listeners are called synchronously from the coordinator's loops, so a listener must
only record what it is told (append to a buffer, bump a gauge) and return; slow work
(I/O) belongs in the listener's own background task. An exception raised by a
listener is logged and otherwise ignored: an observer never stops scheduling.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dagon.core._events import RunTransition, TaskTransition
from dagon.protocol import Telemetry

if TYPE_CHECKING:
    from dagon.core._engine import RunView, TaskView

__all__ = ["CoordinatorListener", "notify"]

log = logging.getLogger(__name__)


class CoordinatorListener:
    """Base class with no-op hooks; override the ones you need and pass the
    listener to ``Coordinator.add_listener``."""

    def run_changed(self, transition: RunTransition, view: RunView) -> None:
        """The run started (``RUNNING``) or ended; ``view`` is its state after the change."""

    def task_changed(self, transition: TaskTransition, view: TaskView) -> None:
        """A task changed state (derived ``pending → ready`` changes are not reported);
        for a terminal state ``view.result`` holds the agent's report, if any."""

    def agent_telemetry(self, sample: Telemetry) -> None:
        """An agent's telemetry sample (already checked; see ``dagon.core._telemetry``)."""


def notify(listeners: list[CoordinatorListener], hook: str, *args: object) -> None:
    """Call ``hook`` on every listener; a failing listener is logged, never propagated."""
    for listener in listeners:
        try:
            getattr(listener, hook)(*args)
        except Exception:
            log.exception("coordinator listener %r failed in %s", listener, hook)
