"""dagon.ini: honoured settings, tolerated sections, defaults, clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import dagon
from dagon._ini import load_ini
from dagon.protocol import ConfigError

from ._scripts import ini


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    settings = load_ini(None, tmp_path / "nope.ini")
    assert settings.scratch_dir_base is None and settings.scratch_for_run() is None
    assert settings.remove_dir is False and settings.threads is None


def test_settings_and_run_base(tmp_path: Path) -> None:
    path = ini(tmp_path / "dagon.ini", scratch=tmp_path / "s", run_base="r-%Y%m%d-__MILLIS__", remove_dir=True)
    settings = load_ini(None, path)
    assert settings.remove_dir is True and settings.threads == 2
    assert settings.sections["ec2"]["secret"] == "hunter2-secret"  # kept as data, never logged
    when = 1_764_000_000.123
    assert settings.scratch_for_run(when) == tmp_path / "s" / f"r-{_day(when)}-1764000000123"


def _day(when: float) -> str:
    import time

    return time.strftime("%Y%m%d", time.localtime(when))


def test_logging_sections_do_not_reconfigure_logging_unless_asked(tmp_path: Path) -> None:
    path = ini(tmp_path / "dagon.ini", scratch=tmp_path / "s")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        dagon.Workflow("quiet", config_file=path)
        assert root.handlers == handlers and root.level == level
        dagon.Workflow("loud", config_file=path, configure_logging=True)
        assert root.level == logging.DEBUG
        formats = [h.formatter._fmt for h in root.handlers if h.formatter is not None]
        assert any("INI-LOGGING" in (f or "") for f in formats)
    finally:
        for h in root.handlers:
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        root.setLevel(level)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[batch]\nremove_dir = maybe\n", "remove_dir must be True or False"),
        ("[batch]\nthreads = many\n", "threads must be a whole number"),
        ("[batch]\nthreads = 0\n", "threads must be at least 1"),
        ("not an ini file\n", "not a valid INI file"),
    ],
)
def test_bad_values_say_what_to_change(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "dagon.ini"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_ini(None, path)


def test_run_base_may_not_escape(tmp_path: Path) -> None:
    settings = load_ini({"batch": {"scratch_dir_base": str(tmp_path), "run_base": "../up"}})
    with pytest.raises(ConfigError, match="relative path without"):
        settings.scratch_for_run()


def test_config_dict_and_slurm_partition_default() -> None:
    from dagon.task import DagonTask, TaskType

    wf = dagon.Workflow("w", config={"slurm": {"partition": "debug"}})
    task = DagonTask(TaskType.SLURM, "s", "true", ntasks=2)
    wf.add_task(task)
    assert dict(wf["s"].runtime_options) == {"ntasks": 2, "partition": "debug"}
