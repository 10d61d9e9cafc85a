"""``dagon.core.Workflow`` plus the parallel patterns and a blocking ``run()`` for scripts.

This is the native workflow of the facade. ``dagon.Workflow`` is its DAGonStar-compatible
subclass (:mod:`dagon._dagonstar`), so scripts get both APIs on one object; the run path
itself lives in :mod:`dagon._runner`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dagon._plan import plan_text
from dagon._runner import DryRun, RunnerContext, RunOptions, raise_failures, run_blocking, runner_context
from dagon.core import RunResult, Task, ValidationError
from dagon.core import Workflow as _CoreWorkflow
from dagon.core._options import check_task_options
from dagon.core._patterns import gather, scatter, sweep

# RunnerContext, runner_context and plan_text are re-exported for the CLI.
__all__ = ["NativeWorkflow", "RunnerContext", "plan_text", "runner_context"]


class NativeWorkflow(DryRun, _CoreWorkflow):
    """A DAG of tasks (see :class:`dagon.core.Workflow`) that can also run itself.

    Under ``dagon run FILE.py`` every workflow a script builds is noted, so that the CLI
    can run the ones the script only defines (also when it builds them inside a function).
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.dry = False
        ctx = runner_context.get()
        if ctx is not None:
            ctx.created.append(self)

    # -- parallel patterns (native API) ------------------------------------------------

    def map(
        self, name: str, command: str, over: str | Iterable[Any], *, after: Iterable[str | Task] = (), **options: Any
    ) -> Task | list[Task]:
        """Map ``command`` over items or over a producer's output files.

        ``over="workflow:///P/GLOB"``: dynamic — when ``P`` has succeeded, one task per
        file of its output matching ``GLOB`` (named ``NAME_STEM``), each with the glob
        reference in ``command`` narrowed to its file; returns the template, which
        dependents reference as ``workflow:///NAME/PATH`` to gather from every copy.
        ``over=[...]``: static — tasks ``NAME_0``, ``NAME_1`` … with ``{item}`` and
        ``{index}`` filled in; returns them.
        """
        if isinstance(over, str):
            if not over.startswith("workflow://"):
                raise ValidationError(
                    f"map {name!r}: over= is a workflow:// glob reference or a list of items, got {over!r}",
                    tasks=[name],
                )
            check_task_options(name, options, exclude=("after",))
            return self.add(Task(name=name, command=command, map_over=over, after=_task_names(after), **options))
        return scatter(self, name, command, over, after=after, **options)

    def sweep(
        self,
        name: str,
        command: str,
        params: Mapping[str, Iterable[Any]],
        *,
        after: Iterable[str | Task] = (),
        **options: Any,
    ) -> list[Task]:
        """A parameter sweep: one task per point of the cartesian product of ``params``."""
        return sweep(self, name, command, params, after=after, **options)

    def gather(
        self, name: str, command: str, over: Iterable[str | Task] | str | Task, path: str, **options: Any
    ) -> Task:
        """Reduce: ``{inputs}`` in ``command`` becomes the ``path`` of every task of ``over``
        (for a dynamic map, pass its template: every copy is gathered)."""
        producers = [over] if isinstance(over, str | Task) else list(over)
        return gather(self, name, command, producers, path, **options)

    def run(
        self,
        *,
        broker: str | None = None,
        coordinator: str | None = None,
        dry_run: bool = False,
        progress: bool | None = None,
        check: bool | None = None,
        keep_scratch: bool = False,
    ) -> RunResult | None:
        """Run to completion and return the result (blocking; for scripts).

        Args:
            broker: MQTT URL; default ``$DAGON_BROKER``, else the embedded default.
            coordinator: a standalone coordinator's id, or ``"auto"`` for the online one
                (default ``$DAGON_COORDINATOR``; else a coordinator in this process). Needed
                when a task references a workflow that another process runs.
            dry_run: validate and print the plan only; nothing runs, nothing is written
                (also ``set_dry(True)`` and ``dagon run --dry-run``).
            progress: show live progress (default: only under ``dagon run``).
            check: raise :class:`~dagon.core.TaskFailed` — naming each failed task with its
                exit code and stderr tail — if the run did not succeed (default: off).
            keep_scratch: keep every task directory (no garbage collection).

        Returns:
            The run's result, or None for a dry run (or under ``dagon submit``).
        """
        options = RunOptions.resolve(
            broker=broker,
            coordinator=coordinator,
            dry_run=dry_run or self.dry,
            progress=progress,
            check=check,
            keep_scratch=keep_scratch,
        )
        return self._run(options)

    def _run(self, options: RunOptions) -> RunResult | None:
        results = run_blocking([self], options)
        if results is None:
            return None
        result = results[self.name]
        self._after_run(result, options)
        if options.check:
            raise_failures(self.name, results)
        return result

    def _routed(self, hosts: frozenset[str]) -> _CoreWorkflow:
        """This workflow as it is submitted when agents are at ``hosts`` (a subclass may reroute tasks)."""
        return self

    def _after_run(self, result: RunResult, options: RunOptions) -> None:
        """What a subclass does with a finished run's result (the DAGonStar layer copies it onto its tasks)."""


def _task_names(items: Iterable[str | Task]) -> tuple[str, ...]:
    return tuple(item.name if isinstance(item, Task) else item for item in items)
