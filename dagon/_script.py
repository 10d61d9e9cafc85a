"""``dagon run FILE.py``: run a workflow script the way ``python FILE.py`` does.

The script runs once, as ``__main__``, with its own ``sys.argv`` and its directory
first on ``sys.path``; its ``run()`` calls get the CLI's settings through a
:class:`~dagon._runner.RunnerContext`. What differs from ``python FILE.py`` is only
what the CLI adds on purpose: live progress, ``--dry-run``, ``--broker`` …, and

* an exception the script does not catch prints a traceback of the *script's* frames
  only (its files, lines and the message — not dagon's, ``runpy``'s or the standard
  library's: they tell the author nothing) and exits 2, an error in the script; a
  SyntaxError shows the line and the caret. A failed DAGonStar run raises
  :class:`~dagon.TaskFailed`, as under ``python``: that exits 1 (a workflow ran and
  failed). ``sys.exit(n)`` exits ``n``;
* a script that only *defines* workflows (at module level or inside functions) and
  never calls ``run()`` gets them run: together when they reference each other.
  A script that called ``run()`` at all — even one that failed and was caught — is
  never run a second time;
* the exit status is also 1 when a run of the script did not succeed.
"""

from __future__ import annotations

import runpy
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dagon._runner import RunnerContext, run_blocking, runner_context, submission_order
from dagon._workflow import NativeWorkflow
from dagon.core import TaskFailed
from dagon.core import Workflow as CoreWorkflow
from dagon.protocol import DagonError

__all__ = ["defined_workflows", "exec_script", "run_script", "submission_order", "user_traceback"]


def exec_script(path: Path, argv: list[str], ctx: RunnerContext) -> tuple[dict[str, Any], int | None]:
    """Run ``path`` as ``__main__`` under ``ctx``; ``(its globals, exit status or None if it ended normally)``.

    Like ``python FILE.py``, except that an uncaught exception prints only the script's
    frames and gives status 2 (1 for :class:`~dagon.TaskFailed`: a run failed);
    ``sys.exit(n)`` gives ``n``. ``KeyboardInterrupt`` propagates to the caller.
    """
    if not path.is_file():
        raise DagonError(f"workflow script {str(path)!r} does not exist")
    token = runner_context.set(ctx)
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *argv]
    sys.path.insert(0, str(path.resolve().parent))
    namespace: dict[str, Any] = {}
    status: int | None = None
    try:
        namespace = runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        sys.stderr.write(user_traceback(exc))
        status = 1 if isinstance(script_error(exc), TaskFailed) else 2
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
        runner_context.reset(token)
    return namespace, status


def run_script(path: Path, argv: list[str], ctx: RunnerContext) -> int:
    """``dagon run FILE.py``: the exit status (see the module docstring)."""
    ctx.like_python = True
    namespace, status = exec_script(path, argv, ctx)
    if status is not None:
        return status
    if ctx.attempted == 0:
        workflows = [wf for wf in defined_workflows(namespace, ctx) if len(wf)]
        if not workflows:
            raise DagonError(f"{path} defines no dagon Workflow with tasks, and runs none")
        token = runner_context.set(ctx)
        try:
            _run_defined(workflows)
        finally:
            runner_context.reset(token)
    return 0 if all(r.ok for r in ctx.results) else 1


def defined_workflows(namespace: dict[str, Any], ctx: RunnerContext) -> list[CoreWorkflow]:
    """The workflows a script built: every ``dagon.Workflow`` made while it ran (also inside
    functions), then the ``dagon.core.Workflow`` objects left in its globals."""
    return _unique([*ctx.created, *(v for v in namespace.values() if isinstance(v, CoreWorkflow))])


def _run_defined(workflows: list[CoreWorkflow]) -> None:
    """Run what a script only defined; linked workflows together, the others one by one."""
    from dagon._runner import RunOptions

    if len(workflows) > 1 and any(wf.graph(external=True).external for wf in workflows):
        run_blocking(workflows, RunOptions.resolve())
        return
    for wf in workflows:
        if isinstance(wf, NativeWorkflow):
            wf.run(check=False)
        else:
            run_blocking([wf], RunOptions.resolve())


def _unique(items: Iterable[CoreWorkflow]) -> list[CoreWorkflow]:
    seen: list[CoreWorkflow] = []
    for item in items:
        if all(item is not other for other in seen):
            seen.append(item)
    return seen


def _exit_status(code: object) -> int:
    """What Python exits with for ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


def user_traceback(exc: BaseException) -> str:
    """What Python prints for ``exc``, keeping only the frames of the script's author.

    Dropped: frames in dagon's packages, in the standard library (``runpy``, ``asyncio`` …) and
    frozen import machinery. Kept: the script, modules beside it, third-party libraries it
    calls. A dagon error's message is complete, so its chain (what it was raised from) is left
    out, and it is named as the user imports it (``dagon.ValidationError``); a group of one
    exception (a ``TaskGroup``'s) is shown as that exception.
    """
    ours = _our_roots()

    def mine(frames: traceback.StackSummary) -> traceback.StackSummary:
        return traceback.StackSummary.from_list(
            [f for f in frames if not (f.filename.startswith("<frozen ") or f.filename.startswith(ours))]
        )

    leaf = script_error(exc)
    if leaf is exc and not isinstance(exc, DagonError):
        te = traceback.TracebackException.from_exception(exc)
        _filter(te, mine, set())
        return "".join(te.format())
    stack = mine(traceback.extract_tb(exc.__traceback__))
    if leaf is not exc:
        stack.extend(mine(traceback.extract_tb(leaf.__traceback__)))
    head = ["Traceback (most recent call last):\n", *stack.format()] if stack else []
    if not isinstance(leaf, DagonError):
        return "".join([*head, *traceback.format_exception_only(leaf)])
    import dagon

    kind = type(leaf)
    label = f"dagon.{kind.__name__}" if getattr(dagon, kind.__name__, None) is kind else kind.__qualname__
    return "".join([*head, f"{label}: {leaf}\n"])


def script_error(exc: BaseException) -> BaseException:
    """``exc``, or the one exception a group of one (a ``TaskGroup``'s) holds."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _filter(
    te: traceback.TracebackException,
    mine: Callable[[traceback.StackSummary], traceback.StackSummary],
    seen: set[int],
) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    te.stack = mine(te.stack)
    for part in (te.__cause__, te.__context__, *(te.exceptions or ())):
        if part is not None:
            _filter(part, mine, seen)


def _our_roots() -> tuple[str, ...]:
    """Directories whose frames are not the script author's: dagon's packages and the standard library."""
    roots = {sysconfig.get_paths()["stdlib"]}
    for name, module in list(sys.modules.items()):
        if (name == "dagon" or name.startswith("dagon.")) and getattr(module, "__file__", None):
            roots.add(str(Path(module.__file__).resolve().parent))  # type: ignore[arg-type]
    return tuple(root.rstrip("/") + "/" for root in sorted(roots))
