"""DAGonStar compatibility: ``from dagon.config import read_config``."""

from __future__ import annotations

import configparser
from collections import defaultdict
from pathlib import Path

from dagon.protocol import ConfigError

__all__ = ["read_config"]


def read_config(
    file_config: str | Path = "dagon.ini", section: str | None = None
) -> defaultdict[str, dict[str, str]] | dict[str, str] | None:
    """A ``dagon.ini`` as ``{section: {option: value}}`` (values raw, never interpolated).

    Args:
        file_config: the file; a missing file reads as empty, as in DAGonStar.
        section: return only this section's options (None if there is no such section).

    Raises:
        ConfigError: the file is not valid INI.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(file_config, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file_config}: not a valid INI file ({exc})") from exc
    if section is not None:
        return dict(parser.items(section, raw=True)) if parser.has_section(section) else None
    found: defaultdict[str, dict[str, str]] = defaultdict(dict)
    for name in parser.sections():
        found[name] = dict(parser.items(name, raw=True))
    return found
