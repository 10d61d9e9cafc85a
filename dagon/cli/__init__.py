"""The command lines: ``dagon`` (:func:`main`) and ``dagon-agent`` (:func:`agent_main`).

One module per group of commands; ``_main`` builds the parser from them and
dispatches:

| module | commands |
|---|---|
| ``_cmd_run`` | ``run``, ``submit``, ``graph`` — running workflow scripts |
| ``_cmd_services`` | ``coordinator``, ``broker``, ``broker-config`` — services |
| ``_cmd_keys`` | ``keys`` — the coordinator's keys and whom it trusts |
| ``_cmd_inspect`` | ``runs``, ``status``, ``resume``, ``gc``, ``agents`` — runs and agents |
| ``_cmd_logs`` | ``logs`` — a task's captured stdout/stderr |
| ``_cmd_watch`` | ``watch``, ``report`` — following a run, reporting on it |
| ``_agent`` | ``dagon-agent`` — the agent daemon and its keys |
| ``_cmd_device`` | ``dagon-agent service``, ``dagon-agent doctor`` — the device end |

Settings are read once per invocation (:mod:`dagon.cli._settings`; the
coordinator's in :mod:`dagon.core._config`, the agent's in
:mod:`dagon.agent._config`) and passed to the command; the table of all of them
is ``docs/configuration.md``.

The two entry points import their command line only when called: ``dagon-agent``
must not load the coordinator side (``dagon.core``, the HTTP stack) on a small
edge device.
"""

from __future__ import annotations

__all__ = ["agent_main", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run one ``dagon`` command (``argv`` default: ``sys.argv[1:]``); returns its exit code."""
    from dagon.cli._main import main as dagon_main

    return dagon_main(argv)


def agent_main(argv: list[str] | None = None) -> int:
    """Run ``dagon-agent`` (``argv`` default: ``sys.argv[1:]``); returns its exit code."""
    from dagon.cli._agent import main as dagon_agent_main

    return dagon_agent_main(argv)
