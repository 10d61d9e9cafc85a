"""What DAGonStar scripts use of ``dagon.cloud``: key options, key pairs, the cloud manager.

dagon starts and stops cloud instances on an agent offering the ``cloud`` runtime
(``TaskType.CLOUD`` tasks go there); a script only describes the instance and the
SSH key, as ``key_options={"option": KeyOptions.GET, "key_path": ...}``.
"""

from __future__ import annotations

import enum
from typing import Any, NoReturn

from dagon.protocol import ConfigError

__all__ = ["CloudManager", "KeyOptions", "KeyPair"]


class KeyOptions(enum.Enum):
    """How a CLOUD task's SSH key is found: an existing key (``GET``) or a new one (``CREATE``)."""

    GET = "GET"
    CREATE = "CREATE"
    NEW = "NEW"


class KeyPair:
    """SSH key pairs for cloud instances."""

    @staticmethod
    def generate_RSA(bits: int = 4096) -> tuple[str, str]:
        """A new RSA key pair: ``(private key in PEM, public key in OpenSSH format)``."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        return private.decode(), public.decode()


class CloudManager:
    """DAGonStar's direct instance management; in dagon the ``cloud`` runtime of an agent does it."""

    @staticmethod
    def get_instance(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise ConfigError(
            "dagon does not manage cloud instances from the script: describe the instance in a"
            " TaskType.CLOUD task (provider, instance_flavour, key_options …) and run it on an agent"
            " offering the 'cloud' runtime"
        )
