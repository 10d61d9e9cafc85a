"""The argument parser of ``dagon`` and ``dagon-agent``: strict, and helpful when refusing.

Every option dagon does not know is an error (exit 2) with the closest known one
suggested; arguments meant for a workflow script go after ``--``. A mistake in a
command's arguments is reported with *that command's* usage (``dagon submit --bogus``
shows ``usage: dagon submit …``), not the top-level one. Abbreviations are refused
(``--brok``): an option added later must not change what an old command line means.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from dagon.protocol._settings import closest

__all__ = ["DagonParser", "closest"]

_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")  # argparse's own test for a negative number
_PARSER = "_dagon_parser"  # the deepest (sub)parser that took part in a parse: it reports the error


class DagonParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` that refuses unknown arguments in the command they were given to."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.set_defaults(**{_PARSER: self})

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        self._refuse_unknown_options(argv)
        return super().parse_known_args(argv, namespace)

    def _refuse_unknown_options(self, argv: list[str]) -> None:
        """Refuse an unknown option before argparse takes the word after it for a positional
        (``dagon run --brokr URL wf.py`` would otherwise run ``URL``; ``dagon-agent --brokr URL``
        would call ``URL`` an invalid command). The scan stops at a subcommand: it checks its own."""
        known = {s for action in self._actions for s in action.option_strings}
        commands = {
            choice
            for action in self._actions
            if isinstance(action, argparse._SubParsersAction)
            for choice in action.choices
        }
        for arg in argv:
            if arg == "--" or arg in commands:
                return
            if not arg.startswith("-") or len(arg) == 1 or _NUMBER.match(arg):
                continue
            if arg.split("=", 1)[0] in known or (not arg.startswith("--") and arg[:2] in known):
                continue
            self.refuse([arg])

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            owner: DagonParser = getattr(ns, _PARSER, self)
            owner.refuse(extra)
        if hasattr(ns, _PARSER):
            delattr(ns, _PARSER)
        return ns

    def refuse(self, extra: list[str]) -> NoReturn:
        """Exit 2: ``extra`` are arguments this command does not take; suggest what was meant."""
        message = f"unrecognized arguments: {' '.join(extra)}"
        options = [s for action in self._actions for s in action.option_strings]
        for arg in extra:
            if arg.startswith("-") and len(arg) > 1:
                name = arg.split("=", 1)[0]
                guess = closest(name, options)
                if guess is not None:
                    message += f" (did you mean {guess}?)"
                break
        self.error(message)

    def error(self, message: str) -> NoReturn:
        choice = re.match(r"argument \S+: invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:
            guess = closest(choice[1], re.findall(r"'([^']*)'", choice[2]))
            if guess is not None:
                message += f"; did you mean {guess!r}?"
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")
