"""``dagon.ini``: the DAGonStar configuration file, read the way dagon needs it.

Honoured: ``[batch] scratch_dir_base`` (where the embedded agent's scratch
directories go), ``run_base`` (a per-run subdirectory: a ``strftime`` pattern in
which ``__MILLIS__`` is replaced by the epoch in milliseconds), ``remove_dir``
(delete intermediate scratch directories after a run) and ``[slurm] partition``
(default partition of SLURM tasks). ``[batch] threads`` is DAGonStar's number of
parallel staging transfers: it is validated and otherwise unused (agents stage a
task's inputs concurrently; how many tasks run at once is each agent's slots).
Every other section — ``[dagon_service]``, cloud credentials (``[ec2]``,
``[gce]``, …), Python ``logging.config`` sections — is kept as data
and otherwise ignored: reading the file never reconfigures logging (pass
``configure_logging=True`` to ``Workflow`` for that) and its values are never
logged (cloud sections hold secrets). A missing file means the defaults.
"""

from __future__ import annotations

import configparser
import logging
import logging.config
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagon.protocol import ConfigError

__all__ = ["DagonIni", "load_ini"]

log = logging.getLogger(__name__)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True, slots=True)
class DagonIni:
    """The settings of a ``dagon.ini`` (or of a ``config=`` dictionary).

    Attributes:
        path: the file read (None: a dictionary, or no file — defaults).
        scratch_dir_base: root of scratch directories on this machine (None: dagon's default).
        run_base: per-run subdirectory pattern ("" = none).
        remove_dir: delete intermediate scratch directories once the run is over.
        threads: DAGonStar's staging parallelism (validated, unused: agents stage concurrently).
        slurm_partition: default partition of SLURM tasks ("" = the cluster's default).
        sections: every section as plain strings (values never logged).
    """

    path: Path | None = None
    scratch_dir_base: Path | None = None
    run_base: str = ""
    remove_dir: bool = False
    threads: int | None = None
    slurm_partition: str = ""
    sections: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def scratch_for_run(self, now: float | None = None) -> Path | None:
        """``scratch_dir_base[/run_base]`` with ``run_base`` expanded for a run starting ``now``."""
        if self.scratch_dir_base is None:
            return None
        if not self.run_base:
            return self.scratch_dir_base
        now = time.time() if now is None else now
        sub = time.strftime(self.run_base.replace("__MILLIS__", str(int(now * 1000))), time.localtime(now))
        if sub.startswith("/") or ".." in Path(sub).parts:
            raise ConfigError(f"[batch] run_base {self.run_base!r} must be a relative path without '..'")
        return self.scratch_dir_base / sub

    def configure_logging(self) -> None:
        """Apply the file's ``logging.config`` sections (only when a script asks for it)."""
        if self.path is None or "loggers" not in self.sections:
            return
        logging.config.fileConfig(self.path, disable_existing_loggers=False)


def _bool(section: str, key: str, value: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"[{section}] {key} must be True or False, got {value!r}")


def load_ini(config: Mapping[str, Any] | None = None, config_file: str | Path = "dagon.ini") -> DagonIni:
    """Settings from ``config`` (a dict of sections) or else ``config_file`` (missing: defaults).

    Raises:
        ConfigError: the file cannot be parsed or a value is unusable (the message names it).
    """
    path: Path | None = None
    if config is not None:
        config = dict(config)
        nested = [isinstance(v, Mapping) for v in config.values()]
        if nested and not any(nested):
            config = {"batch": config}  # DAGonStar scripts pass the [batch] settings flat
        elif not all(nested):
            flat = sorted(str(k) for k, v in config.items() if not isinstance(v, Mapping))
            raise ConfigError(
                f"config mixes sections and settings ({', '.join(flat)}): pass either {{'batch': {{...}}, ...}}"
                " or only [batch] settings such as {'scratch_dir_base': ..., 'remove_dir': False}"
            )
        sections = {str(s): {str(k): str(v) for k, v in dict(opts).items()} for s, opts in config.items()}
    else:
        candidate = Path(config_file)
        if not candidate.is_file():
            log.debug("no %s: using the defaults", candidate)
            return DagonIni()
        parser = configparser.ConfigParser(interpolation=None)  # logging formats contain '%('
        try:
            parser.read(candidate, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"{candidate}: not a valid INI file ({exc})") from exc
        path = candidate.resolve()
        sections = {s: dict(parser.items(s, raw=True)) for s in parser.sections()}
    batch = sections.get("batch", {})
    base = batch.get("scratch_dir_base", "").strip()
    threads_text = batch.get("threads", "").strip()
    threads: int | None = None
    if threads_text:
        try:
            threads = int(threads_text)
        except ValueError:
            raise ConfigError(f"[batch] threads must be a whole number, got {threads_text!r}") from None
        if threads < 1:
            raise ConfigError(f"[batch] threads must be at least 1, got {threads}")
    return DagonIni(
        path=path,
        scratch_dir_base=Path(base).expanduser().absolute() if base else None,  # relative: to the cwd, as in DAGonStar
        run_base=batch.get("run_base", "").strip(),
        remove_dir=_bool("batch", "remove_dir", batch.get("remove_dir", "False")),
        threads=threads,
        slurm_partition=sections.get("slurm", {}).get("partition", "").strip(),
        sections=sections,
    )
