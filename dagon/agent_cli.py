"""``dagon-agent``: the agent daemon's command line (a systemd service in production).

``dagon-agent [flags]`` serves; ``dagon-agent enroll PUBKEY_FILE [--yes]`` trusts a
coordinator key; ``dagon-agent key`` prints this agent's public key.
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
from dagon.agent.runtimes import orchestrator_runtimes, select_runtimes
from dagon.protocol import ConfigError, DagonError, fingerprint, public_key_line
from dagon.protocol.transport import MqttAuth, MqttTransport, Transport, Will, redact_url

__all__ = ["main"]

log = logging.getLogger("dagon.agent_cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dagon-agent", description="Run dagon tasks on this node.")
    p.add_argument("--broker", help="mqtt:// or mqtts:// URL (default: $DAGON_BROKER)")
    p.add_argument("--id", help="agent id (default: $DAGON_AGENT_ID or a stable id in $DAGON_HOME/agent-id)")
    p.add_argument("--scratch", help="scratch root (default: $DAGON_SCRATCH or $DAGON_HOME/scratch)")
    p.add_argument("--labels", help="placement labels, e.g. site=lab,gpu=no (default: $DAGON_LABELS)")
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
        "--checkpoint-store", action="store_true", default=None,
        help="keep copies of checkpoint tasks' outputs for the coordinator (needs the data server)",
    )  # fmt: skip
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="obey unsigned tasks and sign nothing (development only; default: $DAGON_INSECURE)",
    )
    p.add_argument(
        "--runtimes",
        help="container runtimes to offer: docker,charliecloud,apptainer, 'auto' (detect) or 'none'"
        " (default: $DAGON_RUNTIMES or auto)",
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
    return p


async def _serve(config: AgentConfig, *, insecure: bool, orchestrators: list[Runtime] | None = None) -> None:
    assert config.broker is not None
    # Configuration mistakes first (runtimes, TLS files), then keys.
    runtimes = await select_runtimes(config.runtimes, home=config.home, scratch=config.scratch)
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
        )

    agent = Agent(config=config, connect=connect, runtimes=runtimes, signer=signer, trust=trust, insecure=insecure)
    async with agent, _metrics(agent, config):
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


@contextlib.asynccontextmanager
async def _metrics(agent: Agent, config: AgentConfig) -> AsyncIterator[None]:
    if not config.metrics_port:
        yield
        return
    from dagon._metrics_http import serve_metrics
    from dagon.agent._metrics import AgentMetrics

    with serve_metrics(AgentMetrics(agent).registry, port=config.metrics_port, host=config.metrics_host):
        yield


def main(argv: list[str] | None = None) -> int:
    """Run ``dagon-agent`` until SIGINT/SIGTERM or a ``shutdown`` control message.

    Returns:
        0 after a clean shutdown, 2 for a configuration or connection error.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["enroll"], ["key"]):
        return _keys_main(argv)
    args = _parser().parse_args(argv)
    names = ("broker", "id", "scratch", "labels", "slots", "run_as", "data_host", "data_port", "data_url")
    flags = {name: getattr(args, name) for name in (*names, "reachable", "runtimes", "checkpoint_store")}
    flags.update(metrics_port=args.metrics_port, metrics_host=args.metrics_host)
    try:
        config = load_agent_config(config_file=args.config, env=os.environ, flags=flags)
        if not config.broker:
            raise ConfigError("no broker configured: pass --broker mqtt://HOST:PORT or set DAGON_BROKER")
        logging.basicConfig(
            level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        orchestrators = orchestrator_runtimes(config_file=args.config, scratch=config.scratch, env=os.environ)
        asyncio.run(_serve(config, insecure=insecure_from_env(args.insecure), orchestrators=orchestrators))
    except DagonError as exc:
        sys.stderr.write(f"dagon-agent: error: {exc}\n")
        return 2
    return 0


def _keys_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="dagon-agent", description="Manage the keys of this node's agent.")
    p.add_argument("--config", type=Path, help="TOML configuration file (for its home)")
    sub = p.add_subparsers(dest="command", required=True)
    enroll_p = sub.add_parser("enroll", help="trust a coordinator's public key (its coordinator.pub)")
    enroll_p.add_argument("pubkey", type=Path)
    enroll_p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    sub.add_parser("key", help="print this agent's public key (created on first use)")
    args = p.parse_args(argv)
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
