"""``secret://NAME`` placeholders, resolved on the agent and redacted from what it reports.

A task's command and environment values may contain ``secret://NAME``. The
coordinator, the broker, the run store and the public topics only ever see the
placeholder; the agent substitutes the value just before the task runs, from
``DAGON_SECRET_NAME`` in its own environment or ``NAME = "value"`` in its secrets
file, and replaces every value it substituted with ``***`` in the stderr tail
and error text it reports.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from dagon.protocol import ConfigError

__all__ = ["SECRET_RE", "SecretError", "Secrets"]

log = logging.getLogger(__name__)

SECRET_RE: Final = re.compile(r"secret://([A-Za-z_][A-Za-z0-9_]*)")
ENV_PREFIX: Final = "DAGON_SECRET_"
MASK: Final = "***"


class SecretError(Exception):
    """A placeholder names a secret this agent does not have."""


class Secrets:
    """The secret values one agent can substitute.

    Args:
        values: name → value.
        sources: where values come from, for error messages (never the values).
    """

    def __init__(self, values: Mapping[str, str] | None = None, *, sources: str = "") -> None:
        self._values = dict(values or {})
        self._sources = sources or "no secrets configured"

    @classmethod
    def load(cls, *, env: Mapping[str, str], file: Path | None) -> Secrets:
        """``DAGON_SECRET_*`` variables, then the file (the file wins on a clash).

        Raises:
            ConfigError: the file cannot be read or is not a flat TOML table of strings.
        """
        values = {k.removeprefix(ENV_PREFIX): v for k, v in env.items() if k.startswith(ENV_PREFIX) and v}
        sources = [f"{ENV_PREFIX}* environment variables"]
        if file is not None:
            values.update(_read(file))
            sources.append(str(file))
        return cls(values, sources=" or ".join(sources))

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:  # names only, never values
        return f"Secrets({sorted(self._values)})"

    def resolve(self, text: str, used: set[str]) -> str:
        """``text`` with every placeholder replaced; adds the names to ``used``.

        Raises:
            SecretError: a placeholder names a secret that is not defined here.
        """
        if "secret://" not in text:
            return text

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            found = self._values.get(name)
            if found is None:
                raise SecretError(
                    f"secret {name!r} is not defined on this agent: set {ENV_PREFIX}{name} in its environment"
                    f' or add {name} = "..." to its secrets file (looked in {self._sources})'
                )
            used.add(name)
            return found

        return SECRET_RE.sub(value, text)

    def redact(self, text: str, used: Iterable[str]) -> str:
        """``text`` with the values of ``used`` replaced by ``***`` (longest first)."""
        for value in sorted((self._values[n] for n in used if self._values.get(n)), key=len, reverse=True):
            text = text.replace(value, MASK)
        return text


def _read(file: Path) -> dict[str, str]:
    try:
        info = file.stat()
        data = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"secrets file {file} does not exist (check secrets_file / DAGON_SECRETS_FILE)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"secrets file {file} cannot be read: {exc}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("secrets file %s is readable by other users; chmod 600 it", file)
    bad = sorted(k for k, v in data.items() if not isinstance(v, str) or not SECRET_RE.fullmatch(f"secret://{k}"))
    if bad:
        raise ConfigError(f'secrets file {file}: {bad} must be NAME = "value" with NAME made of letters, digits, _')
    return {k: str(v) for k, v in data.items()}


def environ_secrets(file: Path | None) -> Secrets:
    """The agent process's secrets: its environment and its secrets file."""
    return Secrets.load(env=os.environ, file=file)
