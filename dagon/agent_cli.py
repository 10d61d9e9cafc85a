"""``dagon-agent``: the agent daemon's command line (a systemd service in production)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from dagon.agent import Agent, AgentConfig, load_agent_config
from dagon.protocol import ConfigError, DagonError
from dagon.protocol.transport import MqttTransport, Transport, Will, redact_url

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


async def _serve(config: AgentConfig) -> None:
    assert config.broker is not None

    def connect(will: Will) -> Transport:
        assert config.broker is not None
        return MqttTransport(
            config.broker, client_id=f"dagon-agent-{config.agent_id}", will=will, protocol=config.mqtt_protocol
        )

    async with Agent(config=config, connect=connect) as agent, _metrics(agent, config):
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
    args = _parser().parse_args(argv)
    flags = {"broker": args.broker, "id": args.id, "scratch": args.scratch, "labels": args.labels, "slots": args.slots}
    flags.update(metrics_port=args.metrics_port, metrics_host=args.metrics_host)
    try:
        config = load_agent_config(config_file=args.config, env=os.environ, flags=flags)
        if not config.broker:
            raise ConfigError("no broker configured: pass --broker mqtt://HOST:PORT or set DAGON_BROKER")
        logging.basicConfig(
            level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        asyncio.run(_serve(config))
    except DagonError as exc:
        sys.stderr.write(f"dagon-agent: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
