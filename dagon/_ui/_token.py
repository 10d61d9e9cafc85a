"""The dashboard's access token: ``$DAGON_HOME/ui-token``, mode 0600, made at first start.

Anyone holding the token sees every run on the coordinator (read-only unless control
is enabled), so the file is created with ``O_EXCL`` and mode 0600 from the start (never
written first and chmod-ed after), and a token file others can read is refused rather
than used.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Final

from dagon.protocol import ConfigError

__all__ = ["TOKEN_FILE", "cookie_value", "load_or_create_token", "token_matches"]

TOKEN_FILE: Final = "ui-token"
_MIN_LENGTH: Final = 32


def load_or_create_token(home: Path) -> str:
    """The token in ``home/ui-token``; a new random one is written there if the file is missing.

    Raises:
        ConfigError: the file is readable by others, too short, or cannot be read or written.
    """
    path = home / TOKEN_FILE
    try:
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        return _read(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the dashboard token {path}: {exc}") from exc
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _read(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ConfigError(f"cannot read the dashboard token {path}: {exc}") from exc
    with os.fdopen(fd) as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{path} is not a regular file; remove it and restart to make a new dashboard token")
        if mode & 0o077:
            raise ConfigError(
                f"{path} is readable by other users (mode {stat.S_IMODE(mode):o}): run `chmod 600 {path}`,"
                " or remove it and restart to make a new token"
            )
        token = f.read().strip()
    if len(token) < _MIN_LENGTH or any(c.isspace() for c in token):
        raise ConfigError(
            f"the dashboard token in {path} is empty or shorter than {_MIN_LENGTH} characters:"
            " remove the file and restart to make a new one"
        )
    return token


def token_matches(token: str, offered: str) -> bool:
    """Constant-time comparison (the offered value comes from the network)."""
    return hmac.compare_digest(token.encode(), offered.encode())


def cookie_value(token: str) -> str:
    """What the browser keeps after ``?token=``: derived from the token, never the token itself."""
    return hmac.new(token.encode(), b"dagon-ui-session", hashlib.sha256).hexdigest()
