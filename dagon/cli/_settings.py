"""What every ``dagon`` command may need, read once from its flags and the environment.

``main`` builds one :class:`CliSettings` before dispatching and hands it to the
command; no command reads ``os.environ`` itself. The standalone coordinator's own
settings are :class:`dagon.core.CoordinatorConfig` (same precedence, plus a file).
Every setting is listed in ``docs/configuration.md``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dagon._settings import broker_from_env, dagon_home, insecure_from_env
from dagon.core._config import env_mqtt_login, env_mqtt_protocol
from dagon.protocol import DagonError
from dagon.protocol.transport import MqttAuth

__all__ = ["CliSettings", "client_id"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CliSettings:
    """Flags over environment over defaults, for the client-side commands.

    Attributes:
        home: ``$DAGON_HOME`` (run store, keys).
        broker: ``--broker``, else ``$DAGON_BROKER``, else None (embedded / none).
        insecure: ``--insecure``, else ``$DAGON_INSECURE``.
        mqtt_protocol: ``$DAGON_MQTT_PROTOCOL`` (default ``"5"``).
        mqtt_ca, mqtt_cert, mqtt_key, mqtt_username, mqtt_password_file: ``$DAGON_MQTT_*``.
    """

    home: Path
    broker: str | None = None
    insecure: bool = False
    mqtt_protocol: str = "5"
    mqtt_ca: str | None = None
    mqtt_cert: str | None = None
    mqtt_key: str | None = None
    mqtt_username: str | None = None
    mqtt_password_file: str | None = None

    @classmethod
    def load(cls, args: argparse.Namespace, env: Mapping[str, str]) -> CliSettings:
        """The settings of one invocation (reads no file; raises nothing)."""
        return cls(
            home=dagon_home(env),
            broker=broker_from_env(getattr(args, "broker", None), env),
            insecure=insecure_from_env(getattr(args, "insecure", None), env),
            mqtt_protocol=env_mqtt_protocol(env),
            **env_mqtt_login(env),
        )

    def mqtt_auth(self) -> MqttAuth:
        """The broker credentials (read only by commands that connect).

        Raises:
            ConfigError: a TLS or password file is missing or unreadable.
        """
        return MqttAuth.load(
            ca_file=self.mqtt_ca,
            cert_file=self.mqtt_cert,
            key_file=self.mqtt_key,
            username=self.mqtt_username,
            password_file=self.mqtt_password_file,
        )

    def require_broker(self, what: str) -> str:
        """The broker URL, or an error saying how to give one."""
        if self.broker is None:
            raise DagonError(
                f"{what} needs a broker: pass --broker mqtt://HOST:PORT or set DAGON_BROKER"
                " (for development, 'dagon broker' runs one)"
            )
        return self.broker


def client_id(prefix: str) -> str:
    """A unique MQTT client id for a short-lived CLI connection."""
    return f"{prefix}-{os.getpid()}-{os.urandom(2).hex()}"
