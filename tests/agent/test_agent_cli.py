"""``dagon-agent`` argument and configuration errors (a run against a real broker is in tests/test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagon.cli import agent_main as main


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("DAGON_BROKER", "DAGON_AGENT_ID", "DAGON_SCRATCH", "DAGON_LABELS", "DAGON_SLOTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGON_HOME", str(tmp_path))


def test_no_broker_says_how_to_configure_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "no broker configured" in err and "--broker" in err and "DAGON_BROKER" in err


def test_bad_values_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--broker", "mqtt://127.0.0.1:1", "--labels", "oops"]) == 2
    assert "is not key=value" in capsys.readouterr().err
    assert main(["--broker", "mqtt://127.0.0.1:1", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--slots", "many"])
    assert exc.value.code == 2
