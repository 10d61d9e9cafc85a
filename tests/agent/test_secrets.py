"""Secret placeholders: resolution, errors that name what to set, redaction, the secrets file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dagon.agent._secrets import SecretError, Secrets, environ_secrets
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


def test_a_command_references_secrets_through_the_environment() -> None:
    secrets = Secrets({"TOKEN": "s3cr3t-value", "OTHER": "never-given"})
    used: set[str] = set()
    command = secrets.reference('curl -H "Authorization: secret://TOKEN" x', used)
    assert command == 'curl -H "Authorization: ${DAGON_SECRET_TOKEN}" x'
    assert "s3cr3t" not in command
    assert secrets.environment(used) == {"DAGON_SECRET_TOKEN": "s3cr3t-value"}  # only what it references


@pytest.mark.parametrize(
    "leak",
    [
        "token=s3cr3t-value-long",  # whole
        "3cr3t-value-long and more",  # a tail that starts inside it
        "last bytes: s3cr3t-va",  # a tail cut inside it at the end
        "czNjcjN0LXZhbHVlLWxvbmc",  # base64
        "73336372337",  # hex (a prefix of it: cut)
        "s3cr3t%2Dvalue%2Dlong".replace("%2D", "-"),
        "line one\nsecond-line-of-it\n",  # one line of a multi-line value
    ],
)
def test_redaction_covers_partial_and_encoded_leaks(leak: str) -> None:
    secrets = Secrets({"T": "s3cr3t-value-long", "M": "first-line-here\nsecond-line-of-it"})
    redacted = secrets.redact(leak, {"T", "M"})
    assert "***" in redacted
    for piece in ("3cr3t-va", "czNjcjN0", "second-line", "733363723374"):
        assert piece not in redacted


def test_redaction_leaves_short_common_pieces_alone() -> None:
    secrets = Secrets({"T": "abcdefgh"})
    assert secrets.redact("abc is fine, abcdefgh is not", {"T"}) == "abc is fine, *** is not"


def test_the_agent_environment_loses_its_secrets_once_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGON_SECRET_API", "v")
    secrets = environ_secrets(None)
    assert secrets.resolve("secret://API", set()) == "v"
    assert "DAGON_SECRET_API" not in os.environ


def test_a_second_agent_in_the_same_process_still_has_the_environment_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGON_SECRET_TWICE", "v2")
    environ_secrets(None)
    assert environ_secrets(None).resolve("secret://TWICE", set()) == "v2"
