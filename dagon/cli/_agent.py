"""``dagon-agent``: the agent daemon's command line (a systemd service in production).

``dagon-agent [flags]`` serves; ``dagon-agent enroll PUBKEY_FILE [--yes]`` trusts a
coordinator key; ``dagon-agent key`` prints this agent's public key; ``dagon-agent service
install|uninstall`` manages the systemd unit and ``dagon-agent doctor`` checks the device
(both in :mod:`dagon.cli._cmd_device`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from dagon._keys import agent_keys, agent_signer, enroll, read_public_key, warn_insecure
from dagon._settings import insecure_from_env
from dagon.agent import Agent, AgentConfig, Runtime, load_agent_config
from dagon.agent._sdnotify import Notifier
from dagon.agent.runtimes import orchestrator_runtimes, select_runtimes
from dagon.cli._cmd_device import add_doctor_arguments, add_service_arguments, run_doctor_command, run_service
from dagon.cli._parser import DagonParser
from dagon.protocol import ConfigError, DagonError, fingerprint, public_key_line
from dagon.protocol.transport import MqttAuth, MqttTransport, Transport, Will, redact_url

__all__ = ["main"]

log = logging.getLogger("dagon.agent_cli")  # the name its log lines always had


COMMANDS = ("enroll", "key", "service", "doctor")


def _parser() -> DagonParser:
    p = DagonParser(
        prog="dagon-agent",
        usage="dagon-agent [OPTIONS]            serve: run tasks until SIGINT/SIGTERM\n"
        "       dagon-agent COMMAND [ARGS]      enroll | key | service | doctor",
        description="Run dagon tasks on this node. Without a command, the agent serves; a command comes first"
        " (`dagon-agent COMMAND --help` describes it).",
    )
    p.add_argument("--broker", help="mqtt:// or mqtts:// URL (default: $DAGON_BROKER)")
    p.add_argument("--id", help="agent id (default: $DAGON_AGENT_ID or a stable id in $DAGON_HOME/agent-id)")
    p.add_argument("--scratch", help="scratch root (default: $DAGON_SCRATCH or $DAGON_HOME/scratch)")
    p.add_argument("--labels", help="placement labels, e.g. site=lab,gpu=no (default: $DAGON_LABELS)")
    p.add_argument(
        "--addresses",
        help="more addresses of this host to announce, e.g. a NAT's public one (default: $DAGON_ADDRESSES);"
        " tasks placed by host (DAGonStar's ip=) run on the agent announcing theirs",
    )
    p.add_argument("--slots", type=int, help="tasks run at once (default: $DAGON_SLOTS or the CPU count)")
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument("--run-as", help="run process tasks as this unprivileged user (default: $DAGON_RUN_AS)")
    p.add_argument("--data-host", help="address the data server binds (default: $DAGON_DATA_HOST or 127.0.0.1)")
    p.add_argument("--data-port", type=int, help="data server port (default: $DAGON_DATA_PORT or any free one)")
    p.add_argument("--data-url", help="URL other agents reach the data server at (default: http://HOST:PORT)")
    p.add_argument(
        "--unreachable", dest="reachable", action="store_false", default=None,
        help="other hosts cannot connect here (NAT): outputs needed elsewhere go through the coordinator's relay",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint-store",
        action="store_true",
        default=None,
        help="keep copies of checkpoint tasks' outputs for the coordinator (needs the data server)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="obey unsigned tasks and sign nothing (development only; default: $DAGON_INSECURE)",
    )
    p.add_argument(
        "--runtimes",
        help="runtimes to offer besides process, python and http: docker,charliecloud,apptainer (or 'auto':"
        " detect them, 'none'), slurm, ssh, cloud"
        " (default: $DAGON_RUNTIMES or auto)",
    )
    p.add_argument(
        "--no-wait-for-broker", dest="wait_for_broker", action="store_false", default=None,
        help="exit (code 2) if the broker cannot be reached at start, instead of retrying until it answers"
        " (default: $DAGON_WAIT_FOR_BROKER or wait)",
    )  # fmt: skip
    p.add_argument(
        "--devices", help="sensor devices to announce besides the detected ones, e.g. serial:/dev/ttyACM0,i2c:1"
    )
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (default: off)")
    p.add_argument("--metrics-host", help="address of the metrics server (default: 127.0.0.1)")
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default=os.environ.get("DAGON_LOG_LEVEL", "INFO").upper(),
        help="log verbosity (default: $DAGON_LOG_LEVEL or INFO)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands", prog="dagon-agent")
    enroll_p = sub.add_parser("enroll", help="trust a coordinator's public key (its coordinator.pub)")
    enroll_p.add_argument("pubkey", type=Path, help="the coordinator's public key file (`dagon keys show` prints it)")
    enroll_p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    key_p = sub.add_parser("key", help="print this agent's public key (created on first use)")
    for keys_p in (enroll_p, key_p):
        keys_p.add_argument("--config", type=Path, help="TOML configuration file (for its home)")
    service_p = sub.add_parser("service", help="install or uninstall the systemd unit (service install|uninstall)")
    add_service_arguments(service_p)
    doctor_p = sub.add_parser("doctor", help="check what this device can do, and what is wrong")
    add_doctor_arguments(doctor_p)
    return p


async def _serve(
    config: AgentConfig,
    *,
    insecure: bool,
    orchestrators: list[Runtime] | None = None,
    notifier: Notifier | None = None,
) -> None:
    assert config.broker is not None
    # Configuration mistakes first (runtimes, TLS files), then keys.
    runtimes = await select_runtimes(
        config.runtimes, home=config.home, scratch=config.scratch, ssh_key=config.ssh_key,
        ssh_known_hosts=config.ssh_known_hosts, ssh_scratch=config.ssh_scratch,
    )  # fmt: skip
    runtimes = [*runtimes, *(orchestrators or ())]
    if insecure:
        signer, trust = None, None
        warn_insecure(log)
    else:
        signer, trust = await asyncio.to_thread(agent_keys, config.home)
        log.info("agent key %s; obeying %d coordinator key(s)", fingerprint(signer.public_key), len(trust))

    auth = MqttAuth.load(
        ca_file=config.mqtt_ca,
        cert_file=config.mqtt_cert,
        key_file=config.mqtt_key,
        username=config.mqtt_username,
        password_file=config.mqtt_password_file,
    )

    def connect(will: Will) -> Transport:
        assert config.broker is not None
        return MqttTransport(
            config.broker,
            client_id=f"dagon-agent-{config.agent_id}",
            will=will,
            protocol=config.mqtt_protocol,
            auth=auth,
            session_expiry=config.mqtt_session_expiry,
            will_delay=config.mqtt_will_delay,
            max_backoff=config.mqtt_max_backoff,
            wait_for_broker=config.wait_for_broker,
        )

    agent = Agent(config=config, connect=connect, runtimes=runtimes, signer=signer, trust=trust, insecure=insecure)
    notifier = notifier or Notifier(None)
    starting = _StartExtender(notifier, config)
    async with starting, agent, _metrics(agent, config), _systemd(notifier, agent, started=starting):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Only wakes serve_forever: leaving the block does the graceful shutdown.
            loop.add_signal_handler(sig, agent.stopped.set)
        try:
            log.info("agent %s serving on %s", config.agent_id, redact_url(config.broker))
            await agent.serve_forever()
            log.info("agent %s shutting down", config.agent_id)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


class _StartExtender(contextlib.AbstractAsyncContextManager[None]):
    """While the agent starts (it may wait for its broker for long), keep systemd's start timeout
    from expiring (see ``Notifier.starting_loop``); :meth:`done` once it is started."""

    def __init__(self, notifier: Notifier, config: AgentConfig) -> None:
        self._notifier = notifier
        self._status = f"waiting for the broker {redact_url(config.broker or '')}"
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        self._task = asyncio.create_task(self._notifier.starting_loop(self._status), name="systemd-starting")

    async def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aexit__(self, *exc: object) -> None:
        await self.done()


@contextlib.asynccontextmanager
async def _systemd(notifier: Notifier, agent: Agent, *, started: _StartExtender) -> AsyncIterator[None]:
    """READY=1 (the agent is connected and announced), then watchdog pings and status from this
    event loop; STOPPING=1 when the graceful shutdown begins."""
    await started.done()
    if not notifier.enabled:
        yield
        return
    notifier.ready(agent.status_line())
    pinger = asyncio.create_task(notifier.watchdog_loop(agent.status_line), name="systemd-notify")
    try:
        yield
    finally:
        notifier.stopping(f"stopping; {agent.status_line()}")
        pinger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pinger
        notifier.close()


@contextlib.asynccontextmanager
async def _metrics(agent: Agent, config: AgentConfig) -> AsyncIterator[None]:
    if not config.metrics_port:
        yield
        return
    from dagon._metrics_http import serve_metrics
    from dagon.agent._exporter import AgentMetrics

    with serve_metrics(AgentMetrics(agent).registry, port=config.metrics_port, host=config.metrics_host):
        yield


def main(argv: list[str] | None = None) -> int:
    """Run ``dagon-agent`` until SIGINT/SIGTERM or a ``shutdown`` control message.

    Returns:
        0 after a clean shutdown, 2 for a configuration or connection error.
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is not None:
        if argv[:1] != [args.command]:  # `dagon-agent --broker URL key`: the daemon's options mean nothing there
            parser.error(f"the command comes first: dagon-agent {args.command} [ARGS] (dagon-agent {args.command} -h)")
        if args.command == "service":
            return run_service(args)
        if args.command == "doctor":
            return run_doctor_command(args)
        return _keys_command(args)
    names = ("broker", "id", "scratch", "labels", "addresses", "slots", "run_as", "data_host", "data_port", "data_url")
    flags = {
        name: getattr(args, name)
        for name in (*names, "reachable", "runtimes", "checkpoint_store", "devices", "wait_for_broker")
    }
    flags.update(metrics_port=args.metrics_port, metrics_host=args.metrics_host)
    try:
        config = load_agent_config(config_file=args.config, env=os.environ, flags=flags)
        if not config.broker:
            raise ConfigError("no broker configured: pass --broker mqtt://HOST:PORT or set DAGON_BROKER")
        logging.basicConfig(
            level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        orchestrators = orchestrator_runtimes(config_file=args.config, scratch=config.scratch, env=os.environ)
        notifier = Notifier.from_environ()  # removes NOTIFY_SOCKET: tasks must not inherit it
        asyncio.run(
            _serve(config, insecure=insecure_from_env(args.insecure), orchestrators=orchestrators, notifier=notifier)
        )
    except DagonError as exc:
        sys.stderr.write(f"dagon-agent: error: {exc}\n")
        return 2
    return 0


def _keys_command(args: argparse.Namespace) -> int:
    """``dagon-agent enroll PUBKEY`` and ``dagon-agent key``."""
    try:
        home = load_agent_config(config_file=args.config, env=os.environ, flags={}).home
        if args.command == "key":
            signer = agent_signer(home)
            sys.stdout.write(public_key_line(signer.public_key, f"dagon-agent@{socket.gethostname()}"))
            sys.stderr.write(f"fingerprint {fingerprint(signer.public_key)}\n")
            return 0
        key = read_public_key(args.pubkey)
        sys.stdout.write(f"coordinator key {args.pubkey}\n  fingerprint {fingerprint(key)}\n")
        if not args.yes:
            if not sys.stdin.isatty():
                raise ConfigError("not a terminal: compare the fingerprint, then run again with --yes")
            answer = input("Obey tasks signed by this key? Compare the fingerprint with `dagon keys show`. [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                sys.stdout.write("not enrolled\n")
                return 1
        target = enroll(home, args.pubkey)
        sys.stdout.write(f"enrolled: {target} (restart the agent to use it)\n")
    except DagonError as exc:
        sys.stderr.write(f"dagon-agent: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
