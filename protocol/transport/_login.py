"""How a client proves itself to the broker: TLS (CA, client certificate) and username/password.

Configured once at the entry points (flags > environment > TOML) and handed to
:class:`~dagon.protocol.transport.MqttTransport`. The password is never part of
a ``repr`` or a log line.

| setting | environment | agent TOML key |
|---|---|---|
| CA bundle that signed the broker's certificate | ``DAGON_MQTT_CA`` | ``mqtt_ca`` |
| client certificate (PEM) | ``DAGON_MQTT_CERT`` | ``mqtt_cert`` |
| its private key (PEM) | ``DAGON_MQTT_KEY`` | ``mqtt_key`` |
| username | ``DAGON_MQTT_USERNAME`` | ``mqtt_username`` |
| file holding the password | ``DAGON_MQTT_PASSWORD_FILE`` | ``mqtt_password_file`` |

A username and password in the broker URL (``mqtts://user:pw@host``) work too,
but a password file keeps the secret out of process listings and shell history.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dagon.protocol._errors import ConfigError

__all__ = ["MqttAuth"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttAuth:
    """TLS files and credentials for one MQTT client (all optional)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("a client certificate needs its key and a key its certificate: set both or neither")
        if self.password is not None and self.username is None:
            raise ConfigError("an MQTT password was given without a username")

    @property
    def uses_tls_files(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None

    @classmethod
    def load(
        cls,
        *,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        username: str | None = None,
        password_file: str | Path | None = None,
    ) -> MqttAuth:
        """Build from file names, reading the password file.

        Raises:
            ConfigError: a file is missing or unreadable (the message names it).
        """
        paths = {}
        for what, value in (("CA", ca_file), ("certificate", cert_file), ("key", key_file)):
            if value is not None and str(value):
                path = Path(value).expanduser()
                if not path.is_file():
                    raise ConfigError(f"MQTT TLS {what} file {path} does not exist")
                paths[what] = path
        password = None
        if password_file is not None and str(password_file):
            try:
                password = Path(password_file).expanduser().read_text().rstrip("\n")
            except OSError as exc:
                raise ConfigError(f"cannot read the MQTT password file {password_file}: {exc.strerror}") from None
        return cls(
            ca_file=paths.get("CA"),
            cert_file=paths.get("certificate"),
            key_file=paths.get("key"),
            username=username or None,
            password=password,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> MqttAuth:
        return cls.load(
            ca_file=env.get("DAGON_MQTT_CA"),
            cert_file=env.get("DAGON_MQTT_CERT"),
            key_file=env.get("DAGON_MQTT_KEY"),
            username=env.get("DAGON_MQTT_USERNAME"),
            password_file=env.get("DAGON_MQTT_PASSWORD_FILE"),
        )

    def tls_context(self) -> ssl.SSLContext:
        """A verifying client context: the broker's certificate and host name are checked."""
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        try:
            if self.cert_file is not None and self.key_file is not None:
                context.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the MQTT client certificate {self.cert_file}: {exc}") from None
        return context
