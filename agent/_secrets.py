"""``secret://NAME`` placeholders, resolved on the agent and redacted from what it reports.

A task's command and environment values may contain ``secret://NAME``. The
coordinator, the broker, the run store and the public topics only ever see the
placeholder. The agent holds the values — ``DAGON_SECRET_NAME`` in its own
environment (removed from it once read, so nothing the agent starts inherits them)
or ``NAME = "value"`` in its secrets file — and hands a task exactly the ones it
references:

* in the command, ``secret://NAME`` becomes ``${DAGON_SECRET_NAME}`` and the value
  travels in that environment variable: it never appears in the argument vector
  (``/proc/PID/cmdline`` is readable by every local user; the environment is not);
* in an environment value, the placeholder is replaced by the value.

Every value a task received is replaced by ``***`` in the stderr tail and error text
the agent reports — also when only part of it shows (a tail cut through it, one line
of a multi-line value) or when it was printed base64-, hex- or URL-encoded.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import stat
import tomllib
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from dagon.protocol import ConfigError

__all__ = ["SECRET_RE", "SecretError", "Secrets", "environ_secrets"]

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
        """``text`` with every placeholder replaced by its value; adds the names to ``used``.

        Raises:
            SecretError: a placeholder names a secret that is not defined here.
        """
        if "secret://" not in text:
            return text
        return SECRET_RE.sub(lambda match: self._value(match.group(1), used), text)

    def reference(self, command: str, used: set[str]) -> str:
        """``command`` with every placeholder replaced by ``${DAGON_SECRET_NAME}`` (for the shell to
        expand from the task's environment, see :meth:`environment`); adds the names to ``used``.

        Raises:
            SecretError: a placeholder names a secret that is not defined here.
        """
        if "secret://" not in command:
            return command

        def variable(match: re.Match[str]) -> str:
            self._value(match.group(1), used)
            return "${" + ENV_PREFIX + match.group(1) + "}"

        return SECRET_RE.sub(variable, command)

    def environment(self, used: Iterable[str]) -> dict[str, str]:
        """``DAGON_SECRET_NAME`` → value for the secrets in ``used``."""
        return {ENV_PREFIX + name: self._values[name] for name in used if name in self._values}

    def _value(self, name: str, used: set[str]) -> str:
        found = self._values.get(name)
        if found is None:
            raise SecretError(
                f"secret {name!r} is not defined on this agent: set {ENV_PREFIX}{name} in its environment"
                f' or add {name} = "..." to its secrets file (looked in {self._sources})'
            )
        used.add(name)
        return found

    def redact(self, text: str, used: Iterable[str]) -> str:
        """``text`` with the values of ``used`` replaced by ``***``: whole, encoded, by line, and
        the part of one cut off at either end of ``text`` (a tail starts anywhere)."""
        if not text:
            return text
        for value in sorted((self._values[n] for n in used if self._values.get(n)), key=len, reverse=True):
            forms = sorted(_forms(value), key=len, reverse=True)
            for form in forms:
                text = text.replace(form, MASK)
            for form in forms:
                text = _redact_cut(text, form)
        return text


MIN_PARTIAL: Final = 6  # shorter pieces of a value are too common to mask without masking noise


def _forms(value: str) -> set[str]:
    """What a value looks like when printed whole, encoded, or one line at a time."""
    raw = value.encode()
    forms = {
        value,
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        binascii.hexlify(raw).decode(),
        binascii.hexlify(raw).decode().upper(),
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value),
        repr(value)[1:-1],  # as Python prints it inside a str's repr (escaped newlines, quotes)
        value.replace("\n", "\\n"),
    }
    forms.update(line for line in value.splitlines() if len(line.strip()) >= MIN_PARTIAL)
    return {form for form in forms if form and (len(form) >= MIN_PARTIAL or form == value)}


def _redact_cut(text: str, value: str) -> str:
    """Mask, on every line of ``text``, a suffix of ``value`` that begins the line and a prefix of
    it that ends the line (a tail starts anywhere; ``cut``, ``head -c`` end anywhere)."""
    if len(value) <= MIN_PARTIAL:
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines):
        for n in range(min(len(value) - 1, len(line)), MIN_PARTIAL - 1, -1):
            if line.startswith(value[-n:]):
                line = MASK + line[n:]
                break
        for n in range(min(len(value) - 1, len(line)), MIN_PARTIAL - 1, -1):
            if line.endswith(value[:n]):
                line = line[:-n] + MASK
                break
        lines[i] = line
    return "\n".join(lines)


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
    """The agent process's secrets: its environment and its secrets file.

    The ``DAGON_SECRET_*`` variables are removed from the agent's environment once read:
    nothing it starts afterwards (tasks, runtimes' tools, worker processes) inherits them.
    """
    for name in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        _TAKEN[name] = os.environ.pop(name)
    return Secrets.load(env=_TAKEN, file=file)


# What ``environ_secrets`` took out of this process's environment: a second agent in the same
# process (a workflow script running twice on the embedded default) still has them.
_TAKEN: dict[str, str] = {}
