"""Secret placeholders: resolution, errors that name what to set, redaction, the secrets file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dagon.agent._secrets import SecretError, Secrets
from dagon.protocol import ConfigError


def test_resolve_records_what_was_used_and_redacts_it() -> None:
    secrets = Secrets({"A": "alpha", "AB": "alphabet"})
    used: set[str] = set()
    assert secrets.resolve("x secret://AB y secret://A", used) == "x alphabet y alpha"
    assert used == {"A", "AB"}
    assert secrets.redact("alphabet and alpha", used) == "*** and ***"  # longest value first
    assert secrets.resolve("no placeholders", used) == "no placeholders"
    assert "alpha" not in repr(secrets)


def test_an_unknown_secret_says_where_to_define_it(tmp_path: Path) -> None:
    secrets = Secrets.load(env={}, file=None)
    with pytest.raises(SecretError, match="DAGON_SECRET_TOKEN"):
        secrets.resolve("secret://TOKEN", set())


def test_the_file_adds_to_and_overrides_the_environment(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    file = tmp_path / "secrets.toml"
    file.write_text('TOKEN = "from-file"\nOTHER = "o"\n')
    os.chmod(file, 0o644)
    secrets = Secrets.load(env={"DAGON_SECRET_TOKEN": "from-env", "DAGON_SECRET_ENV_ONLY": "e"}, file=file)
    used: set[str] = set()
    assert secrets.resolve("secret://TOKEN secret://ENV_ONLY secret://OTHER", used) == "from-file e o"
    assert "readable by other users" in caplog.text and "from-file" not in caplog.text


@pytest.mark.parametrize("content", ["TOKEN = 5\n", '"bad name" = "x"\n', "not toml ["])
def test_a_bad_secrets_file_is_a_config_error(tmp_path: Path, content: str) -> None:
    file = tmp_path / "secrets.toml"
    file.write_text(content)
    with pytest.raises(ConfigError, match="secrets file"):
        Secrets.load(env={}, file=file)
    with pytest.raises(ConfigError, match="does not exist"):
        Secrets.load(env={}, file=tmp_path / "absent.toml")
