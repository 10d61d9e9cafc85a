"""The cloud runtime (DAGonStar's ``TaskType.CLOUD``): a VM through apache-libcloud, the task over SSH.

For each attempt: find the instance (by ``instance_id``, else by ``instance_name``) or
create it (``instance_flavour``'s ``image`` and ``size``, the provider's key pair
``key_name``), start it if stopped, wait until it runs and its SSH port answers, then run
the task on it with the SSH runtime (staging, process-group kill, exit code — see
:mod:`dagon.agent.runtimes._ssh`). Afterwards the instance is stopped when
``stop_instance`` is true, and destroyed when ``destroy_instance`` is true and dagon
created it; otherwise it keeps running for the next task that names it.

Credentials are task options holding ``secret://NAME`` placeholders (``credentials={"key":
"secret://AWS_KEY", "secret": "secret://AWS_SECRET"}``; without them the agent's secrets
``<PROVIDER>_KEY`` and ``<PROVIDER>_SECRET``, e.g. ``EC2_KEY``, so DAGonStar scripts run
unchanged), resolved on the agent from its secrets and never logged or reported. The
instance's host key is verified like any SSH host: it must be in the agent's
``known_hosts``, or given as ``host_key`` (the public key line the image or its user data
installs).

Options: ``provider`` (a libcloud provider name: ``ec2``, ``gce``, ``openstack``, …),
``credentials``, ``region``, ``api_url`` (the provider's API, for private clouds and emulations;
DAGonStar's ``endpoint`` was a Globus endpoint and is ignored),
``instance_id``, ``instance_name``, ``instance_flavour`` (``image``, ``size``, ``location``),
``key_options`` (``key_path``: the private key; ``cloud_args.name``: the provider's key
pair), ``ssh_username``, ``ssh_port``, ``host_key``, ``stop_instance``,
``destroy_instance``, ``boot_timeout`` (seconds; default 600), ``remote_scratch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Final

from dagon.agent.runtimes._base import Execution, Outcome, Runtime
from dagon.agent.runtimes._jobs import OptionError, Options, backoff, run_cleanup
from dagon.agent.runtimes._ssh import SshRuntime
from dagon.agent.runtimes._ssh_pool import SshTarget
from dagon.protocol import ResultStatus

__all__ = ["CLOUD_OPTIONS", "CloudError", "CloudRuntime"]

log = logging.getLogger(__name__)

CLOUD_OPTIONS: Final = frozenset(
    {"provider", "credentials", "region", "api_url", "endpoint", "instance_id", "instance_name", "instance_flavour",
     "key_options", "ssh_username", "ssh_port", "host_key", "stop_instance", "destroy_instance", "boot_timeout",
     "remote_scratch"}
)  # fmt: skip
BOOT_TIMEOUT: Final = 600.0


class CloudError(Exception):
    """The provider refused or failed a call; the message is one line (never a credential)."""


def _cloud_error(provider: str, exc: BaseException) -> CloudError:
    from libcloud.common.types import InvalidCredsError

    if isinstance(exc, InvalidCredsError):
        return CloudError(f"cloud: {provider} refused the credentials: check the secrets named in credentials=")
    text = " ".join(str(exc).split())[:300]
    return CloudError(f"cloud: {provider}: {type(exc).__name__}: {text}")


class _Spec:
    """A task's cloud options, checked."""

    def __init__(self, execution: Execution) -> None:
        a = execution.assignment
        raw = a.runtime_options
        opts = Options("cloud", raw, CLOUD_OPTIONS)
        self.provider = (opts.text("provider") or "").lower()
        if not self.provider:
            raise OptionError("cloud option 'provider' is required (a libcloud provider name, e.g. 'ec2')")
        # DAGonStar kept them in dagon.ini's [ec2] key/secret: here they are the agent's
        # secrets EC2_KEY and EC2_SECRET (DAGON_SECRET_EC2_KEY, …) unless named otherwise.
        default = self.provider.upper().replace("-", "_")
        creds = raw.get("credentials") or {"key": f"secret://{default}_KEY", "secret": f"secret://{default}_SECRET"}
        if not isinstance(creds, Mapping) or not all(isinstance(v, str) for v in creds.values()):
            raise OptionError("cloud option 'credentials' must map key/secret to secret://NAME placeholders")
        plain = sorted(k for k, v in creds.items() if "secret://" not in v and k != "key")
        if plain:
            raise OptionError(
                f"cloud credentials {plain} must be secret://NAME placeholders, not values written in the workflow"
            )
        self.key = execution.resolve(creds.get("key", ""))
        self.secret = execution.resolve(creds.get("secret", ""))
        self.region = opts.text("region")
        self.endpoint = opts.text("api_url")  # DAGonStar's `endpoint` (a Globus endpoint id) means nothing here
        self.instance_id = opts.text("instance_id")
        self.name = opts.text("instance_name") or f"dagon-{a.workflow}-{a.task}"
        flavour = raw.get("instance_flavour") or {}
        if not isinstance(flavour, Mapping):
            raise OptionError(f"cloud option 'instance_flavour' must be a table (image, size), got {flavour!r}")
        self.image = flavour.get("image")
        self.size = flavour.get("size")
        self.location = flavour.get("location")
        keys = raw.get("key_options") or {}
        if not isinstance(keys, Mapping):
            raise OptionError(f"cloud option 'key_options' must be a table (key_path, cloud_args), got {keys!r}")
        cloud_args = keys.get("cloud_args") or {}
        self.key_name = cloud_args.get("name") if isinstance(cloud_args, Mapping) else None
        key_path = keys.get("key_path")
        self.key_path = Path(str(key_path)).expanduser() if key_path else None
        self.username = opts.text("ssh_username") or "root"
        port = opts.integer("ssh_port", minimum=1)
        self.port = port or 22
        self.host_key = opts.text("host_key") or ""
        self.stop = opts.flag("stop_instance")
        self.destroy = opts.flag("destroy_instance")
        boot = raw.get("boot_timeout", BOOT_TIMEOUT)
        if isinstance(boot, bool) or not isinstance(boot, int | float) or boot <= 0:
            raise OptionError(f"cloud option 'boot_timeout' must be seconds > 0, got {boot!r}")
        self.boot_timeout = float(boot)
        self.remote_scratch = opts.text("remote_scratch")
        if self.instance_id is None and not (self.image and self.size):
            raise OptionError(
                "cloud: give instance_id= (an existing instance) or instance_flavour={'image': ..., 'size': ...}"
            )


def _driver(spec: _Spec) -> Any:
    """A libcloud driver for the spec (blocking: runs in a thread)."""
    from libcloud.compute.providers import get_driver

    try:
        cls = get_driver(spec.provider)
    except AttributeError:
        raise CloudError(f"cloud: {spec.provider!r} is not a libcloud compute provider (e.g. ec2, gce)") from None
    kwargs: dict[str, Any] = {}
    if spec.region:
        kwargs["region"] = spec.region
    if spec.endpoint:
        url = urllib.parse.urlsplit(spec.endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise CloudError(f"cloud: api_url must be an http(s):// URL, got {spec.endpoint!r}")
        kwargs.update(host=url.hostname, port=url.port or (443 if url.scheme == "https" else 80),
                      secure=url.scheme == "https")  # fmt: skip
        if spec.provider == "ec2":
            kwargs["signature_version"] = "4"
    return cls(spec.key, spec.secret, **kwargs)


class CloudRuntime(Runtime):
    """Runs each attempt on a cloud VM it finds or creates.

    Args:
        ssh: the SSH runtime that runs the task on the instance.
        state: JSON file recording the instances this agent created (so a restarted agent
            still knows which ones it may destroy).
    """

    name: ClassVar[str] = "cloud"

    def __init__(self, *, ssh: SshRuntime, state: Path) -> None:
        self._ssh = ssh
        self._state = Path(state)
        self._drivers: dict[tuple[str, ...], Any] = {}
        self._instances: dict[str, asyncio.Lock] = {}

    def __repr__(self) -> str:  # credentials stay out of reprs and logs
        return f"CloudRuntime(state={str(self._state)!r})"

    async def run(self, execution: Execution) -> Outcome:
        try:
            spec = _Spec(execution)
        except (OptionError, ValueError) as exc:
            return Outcome(ResultStatus.ERROR, None, error=str(exc))
        try:
            driver = await self._driver_for(spec)
            # Tasks naming the same instance share it, but only one creates it.
            async with self._instances.setdefault(spec.instance_id or spec.name, asyncio.Lock()):
                node, created = await self._instance(driver, spec)
                address = await self._wait_ready(driver, spec, node)
        except CloudError as exc:
            return Outcome(ResultStatus.ERROR, None, error=str(exc))
        target = SshTarget(address, spec.port, spec.username, spec.key_path, spec.host_key)
        try:
            return await self._ssh.run_on(target, execution, remote_scratch=spec.remote_scratch)
        finally:
            await run_cleanup(lambda: self._after(driver, spec, node.id, created))

    async def _driver_for(self, spec: _Spec) -> Any:
        key = (spec.provider, spec.key, spec.secret, spec.region or "", spec.endpoint or "")
        driver = self._drivers.get(key)
        if driver is None:
            try:
                driver = await asyncio.to_thread(_driver, spec)
            except CloudError:
                raise
            except Exception as exc:
                raise _cloud_error(spec.provider, exc) from None
            self._drivers[key] = driver
        return driver

    async def _call(self, spec: _Spec, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except Exception as exc:
            raise _cloud_error(spec.provider, exc) from None

    async def _instance(self, driver: Any, spec: _Spec) -> tuple[Any, bool]:
        """The existing instance (by id, else by name), or a new one."""
        if spec.instance_id:
            found = await self._call(spec, driver.list_nodes, ex_node_ids=[spec.instance_id])
            if not found:
                raise CloudError(f"cloud: {spec.provider} has no instance {spec.instance_id!r} (instance_id=)")
            return found[0], False
        nodes = await self._call(spec, driver.list_nodes)
        for node in nodes:
            if node.name == spec.name and str(node.state) not in ("terminated", "unknown"):
                log.info("cloud: reusing instance %s (%s)", node.id, spec.name)
                return node, False
        from libcloud.compute.base import NodeImage, NodeSize

        image = NodeImage(id=str(spec.image), name=str(spec.image), driver=driver)
        size = NodeSize(id=str(spec.size), name=str(spec.size), ram=0, disk=0, bandwidth=None, price=0.0, driver=driver)
        kwargs: dict[str, Any] = {}
        if spec.key_name:
            kwargs["ex_keyname"] = str(spec.key_name)
        node = await self._call(spec, driver.create_node, name=spec.name, size=size, image=image, **kwargs)
        await asyncio.to_thread(self._remember, node.id, spec)
        log.info("cloud: created instance %s (%s) from %s, %s", node.id, spec.name, spec.image, spec.size)
        return node, True

    async def _wait_ready(self, driver: Any, spec: _Spec, node: Any) -> str:
        """Start the instance if stopped; wait until it runs and its SSH port accepts connections."""
        deadline = time.monotonic() + spec.boot_timeout
        tries = 0
        started = False
        while True:
            state = str(node.state)
            if state == "stopped" and not started:
                await self._call(spec, driver.start_node, node)
                started = True
            address = (node.public_ips or node.private_ips or [None])[0]
            if state == "running" and address and await _port_open(address, spec.port):
                return str(address)
            if state in ("terminated", "error"):
                raise CloudError(f"cloud: instance {node.id} is {state}")
            if time.monotonic() > deadline:
                raise CloudError(
                    f"cloud: instance {node.id} not reachable over SSH (state {state}, address {address}) within"
                    f" {spec.boot_timeout:g} s (boot_timeout=)"
                )
            tries += 1
            await asyncio.sleep(backoff(tries, cap=5.0) + 0.2)
            found = await self._call(spec, driver.list_nodes, ex_node_ids=[node.id])
            if found:
                node = found[0]

    async def _after(self, driver: Any, spec: _Spec, node_id: str, created: bool) -> None:
        try:
            found = await self._call(spec, driver.list_nodes, ex_node_ids=[node_id])
            if not found:
                return
            if spec.destroy and (created or await asyncio.to_thread(self._created_here, node_id)):
                await self._call(spec, driver.destroy_node, found[0])
                await asyncio.to_thread(self._forget, node_id)
                log.info("cloud: destroyed instance %s", node_id)
            elif spec.stop:
                await self._call(spec, driver.stop_node, found[0])
                log.info("cloud: stopped instance %s", node_id)
        except CloudError as exc:
            log.warning("cloud: after the task, instance %s: %s", node_id, exc)

    # -- which instances this agent created ----------------------------------------------

    def _load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self._state.read_text())
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self, doc: dict[str, Any]) -> None:
        self._state.parent.mkdir(parents=True, exist_ok=True)
        part = self._state.with_suffix(".part")
        part.write_text(json.dumps(doc, indent=1))
        part.replace(self._state)

    def _remember(self, node_id: str, spec: _Spec) -> None:
        doc = self._load()
        doc[node_id] = {"provider": spec.provider, "name": spec.name, "created": time.time()}
        self._save(doc)

    def _forget(self, node_id: str) -> None:
        doc = self._load()
        if doc.pop(node_id, None) is not None:
            self._save(doc)

    def _created_here(self, node_id: str) -> bool:
        return node_id in self._load()

    async def aclose(self) -> None:
        await self._ssh.aclose()


async def _port_open(host: str, port: int) -> bool:
    try:
        async with asyncio.timeout(3):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
