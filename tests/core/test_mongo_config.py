"""The MongoDB sink's configuration checks and credential redaction (no server needed)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from _broker import free_port

from dagon.core import MongoSink
from dagon.core._mongo import redact_mongo_url
from dagon.protocol import ConfigError


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "mongodb://dagon:pa%40ss:w@h1:27017,h2:27018/db?authSource=admin",
            "mongodb://dagon:***@h1:27017,h2:27018/db?authSource=admin",
        ),
        ("mongodb+srv://u:secret@cluster0.example.net/", "mongodb+srv://u:***@cluster0.example.net/"),
        ("mongodb://onlyuser@h:1/", "mongodb://onlyuser@h:1/"),
        ("mongodb://127.0.0.1:27017", "mongodb://127.0.0.1:27017"),
    ],
)
def test_passwords_are_redacted(url: str, shown: str) -> None:
    assert redact_mongo_url(url) == shown


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "postgres://u:topsecret@h/"}, "not a MongoDB URL"),
        ({"url": "mongodb://h/", "database": "a.b"}, "not a valid MongoDB database name"),
        ({"url": "mongodb://h/", "batch_size": 10, "max_buffer": 5}, "batch_size"),
        ({"url": "mongodb://h/", "min_backoff": 5.0, "max_backoff": 1.0}, "min_backoff"),
    ],
)
def test_bad_settings_are_refused_at_construction(kwargs: dict[str, object], message: str) -> None:
    url = str(kwargs.pop("url"))
    with pytest.raises(ConfigError, match=message) as info:
        MongoSink(url, **kwargs)  # type: ignore[arg-type]
    assert "topsecret" not in str(info.value)


async def test_an_unreachable_server_is_reported_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dagon.core._mongo")
    url = f"mongodb://dagon:hunter2-secret@127.0.0.1:{free_port()}/?directConnection=true"
    async with MongoSink(url, server_timeout=0.3, min_backoff=0.1, max_backoff=0.2) as sink:
        async with asyncio.timeout(10):
            while sink.stats().failures < 3:
                await asyncio.sleep(0.05)
        stats = sink.stats()
        assert stats.up is False and stats.last_error
    text = caplog.text + stats.last_error
    assert "hunter2-secret" not in text
    assert "dagon:***@127.0.0.1" in caplog.text
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1  # once, not per retry


@pytest.mark.parametrize("url", ["mongodb://dagon:hunter2-secret@", "mongodb://dagon:hunter2-secret@h:99999/"])
async def test_a_malformed_url_is_a_config_error_at_start(url: str) -> None:
    with pytest.raises(ConfigError, match="--mongo-url") as info:
        async with MongoSink(url):
            pass
    assert "hunter2-secret" not in str(info.value) and "dagon:***@" in str(info.value)
