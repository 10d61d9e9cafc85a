"""Reading settings: typed values from flags, environment variables and TOML files, each wrong one a
:class:`ConfigError` naming the setting and what it must be. Shared by the coordinator's, the
agent's and the CLI's configuration (the values differ, the rules do not)."""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from dagon.protocol._errors import ConfigError

__all__ = ["as_bool", "as_float", "as_int", "as_str", "closest", "read_toml", "truth"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def truth(value: Any) -> Any:
    """An environment variable's 1/true/yes/on or 0/false/no/off as a bool (anything else as given)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return value


def as_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, got {value!r}")
    return value


def as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a whole number, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a whole number, got {value!r}") from None


def as_float(value: Any, what: str, *, unit: str = "") -> float:
    """``unit``: what the number counts, for the message (``"seconds"`` → "a number of seconds")."""
    kind = f"a number of {unit}" if unit else "a number"
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be {kind}, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be {kind}, got {value!r}") from None


def as_bool(value: Any, what: str) -> bool:
    """A bool, or one of 1/true/yes/on, 0/false/no/off (as environment variables write them)."""
    value = truth(value)
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{what} must be true or false, got {value!r}")


def read_toml(config_file: Path, known: Collection[str]) -> dict[str, Any]:
    """The settings of a TOML file; a missing or unreadable file, bad TOML or an unknown top-level key
    is a :class:`ConfigError` (the unknown ones listed with every known one)."""
    try:
        values = tomllib.loads(Path(config_file).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {config_file} does not exist (check --config)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {config_file} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"config file {config_file}: unknown setting(s) {unknown}; known: {sorted(known)}")
    return values


def closest(word: str, known: Iterable[str]) -> str | None:
    """The entry of ``known`` closest to ``word`` (difflib), or None when nothing is close: what a
    misspelled setting, option or command most probably meant."""
    matches = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None
