"""Services: ``dagon coordinator``, ``dagon broker`` and ``dagon broker-config``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from rich.console import Console

from dagon._keys import coordinator_signer, coordinator_trust, warn_insecure
from dagon._ui._cli import UiSettings, serve_ui
from dagon.cli._common import Subparsers, add_broker, add_insecure, serve, unless_stopped
from dagon.cli._settings import CliSettings
from dagon.core._config import CoordinatorConfig, load_coordinator_config
from dagon.protocol import fingerprint
from dagon.protocol.transport import MqttTransport, redact_url

__all__ = ["add_commands"]

log = logging.getLogger("dagon.cli")


def add_commands(sub: Subparsers) -> None:
    coord = sub.add_parser("coordinator", help="run a standalone coordinator service")
    add_broker(coord)
    coord.add_argument("--config", type=Path, help="TOML configuration file (see docs/configuration.md)")
    coord.add_argument("--id", help="coordinator id (default: main)")
    coord.add_argument("--heartbeat-ttl", type=float, help="seconds before a silent agent is lost (default: 15)")
    coord.add_argument(
        "--requeue-grace",
        type=float,
        help="seconds the tasks of an agent whose Last Will arrived wait for it to reconnect before running"
        " elsewhere (default: 10; a restarting broker publishes every agent's Will)",
    )
    coord.add_argument(
        "--keep-finished",
        type=float,
        help="seconds a finished run stays in memory and its task results retained on the broker; then"
        " `dagon status` answers from the run store (default: 600)",
    )
    coord.add_argument(
        "--keep-finished-tasks",
        type=int,
        help="tasks of finished runs kept in memory at most, oldest runs leaving first (default: 100000)",
    )
    coord.add_argument(
        "--no-public-results",
        dest="public_results",
        action="store_const",
        const=False,
        help="publish only each run's retained status, not a retained JSON result per task and the events"
        " (Mosquitto 2.0 keeps ~0.85 KB of heap for every topic that ever held a retained message)",
    )
    coord.add_argument("--relay-host", help="address the data relay binds (default: loopback)")
    coord.add_argument("--relay-port", type=int, help="data relay port (default: any free one)")
    coord.add_argument("--relay-url", help="URL agents use for the relay (default: http://RELAY_HOST:PORT)")
    coord.add_argument(
        "--relay-tls-cert",
        type=Path,
        help="serve the relay and checkpoint storage over HTTPS with this certificate (with --relay-tls-key;"
        " agents verify it with their data_tls_ca)",
    )
    coord.add_argument("--relay-tls-key", type=Path, help="private key of --relay-tls-cert")
    coord.add_argument(
        "--enrolled-agents-only",
        action="store_true",
        default=None,
        help="kept for old scripts: agents are always admitted only when enrolled (keys/known_agents)",
    )
    add_insecure(coord)
    coord.add_argument(
        "--no-wait-for-broker", dest="wait_for_broker", action="store_false", default=None,
        help="exit if the broker cannot be reached at start, instead of retrying until it answers"
        " (env DAGON_WAIT_FOR_BROKER; default: wait)",
    )  # fmt: skip
    coord.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (default 0: off)")
    coord.add_argument("--metrics-host", help="address of the metrics server (default: 127.0.0.1)")
    coord.add_argument(
        "--mongo-url",
        help="also write runs, tasks and telemetry to this MongoDB (env DAGON_MONGO_URL; needs dagon-engine[mongo])",
    )
    coord.add_argument("--mongo-db", help="MongoDB database for --mongo-url (env DAGON_MONGO_DB; default: dagon)")
    coord.add_argument(
        "--mongo-buffer",
        type=int,
        help="documents kept while MongoDB is unreachable (env DAGON_MONGO_BUFFER; default 100000, ~1.3 KB each)",
    )
    coord.add_argument(
        "--ui-port", type=int, metavar="N",
        help="serve the live web dashboard on this port (0: any free port; default: off; see docs/dashboard.md)",
    )  # fmt: skip
    coord.add_argument("--ui-host", metavar="ADDR", help="address of the dashboard (default: 127.0.0.1)")
    coord.add_argument(
        "--ui-allow-control", action="store_true", default=None,
        help="offer cancel and resume in the dashboard (default: read-only)",
    )  # fmt: skip
    coord.set_defaults(handler=_coordinator)

    broker = sub.add_parser("broker", help="run the embedded MQTT broker (development)")
    broker.add_argument("--port", type=int, default=1883, help="TCP port on 127.0.0.1 (default: 1883)")
    broker.set_defaults(handler=_broker)

    bconf = sub.add_parser("broker-config", help="write a Mosquitto config with TLS client certificates and an ACL")
    bconf.add_argument("directory", type=Path, help="where the config, ACL, CA and certificates are written")
    bconf.add_argument("--agent", action="append", default=[], help="agent id (repeat; run again to add more)")
    bconf.add_argument("--coordinator", action="append", default=[], help="coordinator id (default: main)")
    bconf.add_argument("--client", action="append", default=[], help="client name allowed to submit runs")
    bconf.add_argument("--port", type=int, default=8883, help="TLS listener port (default: 8883)")
    bconf.add_argument("--listen", default="127.0.0.1", help="address the broker binds (default: loopback only)")
    bconf.add_argument(
        "--server-name", action="append", default=[], help="DNS name or IP clients use for the broker (repeat)"
    )
    bconf.set_defaults(handler=_broker_config)


_FLAGS = (
    "broker", "id", "heartbeat_ttl", "requeue_grace", "keep_finished", "keep_finished_tasks", "relay_host",
    "relay_port", "relay_url", "relay_tls_cert", "relay_tls_key", "enrolled_agents_only", "insecure",
    "metrics_port", "metrics_host", "mongo_url", "mongo_db", "mongo_buffer", "ui_port", "ui_host",
    "ui_allow_control", "wait_for_broker", "public_results",
)  # fmt: skip


def _coordinator(args: argparse.Namespace, settings: CliSettings) -> int:
    flags = {name: getattr(args, name) for name in _FLAGS}
    config = load_coordinator_config(config_file=args.config, env=os.environ, flags=flags, default_home=settings.home)
    if config.broker is None:
        settings.require_broker("dagon coordinator")  # raises, saying how to give one
    return run_coordinator(config)


def run_coordinator(config: CoordinatorConfig) -> int:
    """Serve as ``config`` says until SIGINT or SIGTERM."""
    from dagon.agent._replay import ReplayRecord
    from dagon.core import Coordinator
    from dagon.core._retention import Retention
    from dagon.core._store import RunStore
    from dagon.protocol import DEFAULT_FRESHNESS, ReplayGuard

    broker = config.broker
    assert broker is not None
    auth = config.mqtt_auth()
    if config.insecure:
        warn_insecure(log)
        signer, trust = None, None
    else:
        signer = coordinator_signer(config.home)
        trust = coordinator_trust(config.home)  # agents are admitted only when enrolled, whatever the flag
        log.info("coordinator key %s", fingerprint(signer.public_key))
    sink = _mongo_sink(config)  # a missing pymongo or a bad URL fails here, before anything starts
    relay_tls = config.relay_tls()

    async def start(stop: asyncio.Event) -> None:
        store = RunStore(config.store_path)
        # Accepted submissions, cancellations and resumes are remembered across restarts (replays refused).
        record = ReplayRecord(config.home / "replay-coordinator.sqlite", window=DEFAULT_FRESHNESS)
        replay = ReplayGuard(on_accept=record.add)
        try:
            replay.seed(await asyncio.to_thread(record.open), floor=record.floor)
            coordinator = Coordinator(
                connect=lambda will: MqttTransport(
                    broker,
                    client_id=f"dagon-coordinator-{config.coordinator_id}",
                    will=will,
                    protocol=config.mqtt_protocol,
                    auth=auth,
                    # The broker keeps the session (and queues QoS 1 reports) while the connection is down,
                    # and while this service restarts: runs submitted meanwhile wait for it.
                    session_expiry=config.mqtt_session_expiry,
                    resume_session=True,
                    wait_for_broker=config.wait_for_broker,
                ),
                coordinator_id=config.coordinator_id,
                store=store,
                heartbeat_ttl=config.heartbeat_ttl,
                requeue_grace=config.requeue_grace,
                retention=Retention(keep_for=config.keep_finished, max_tasks=config.keep_finished_tasks),
                publish_results=config.public_results,
                signer=signer,
                trust=trust,
                insecure=config.insecure,
                relay_dir=config.relay_dir,
                relay_host=config.relay_host,
                relay_port=config.relay_port,
                relay_tls=relay_tls,
                relay_url=config.relay_url,
                replay=replay,
            )
            if sink is not None:
                coordinator.add_listener(sink)
            ui = None
            if config.ui_port is not None:
                ui = UiSettings(port=config.ui_port, host=config.ui_host, allow_control=config.ui_allow_control)
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(_maybe(sink))
                if not await unless_stopped(stop, stack.enter_async_context(coordinator)):
                    return  # stopped while waiting for the broker
                await stack.enter_async_context(_metrics(coordinator, config, sink))
                await stack.enter_async_context(serve_ui(coordinator, ui, home=config.home, out=sys.stderr))
                log.info(
                    "coordinator %r serving on %s (store %s)", config.coordinator_id, redact_url(broker), store.path
                )
                await stop.wait()
        finally:
            record.close()
            store.close()

    asyncio.run(serve(start))
    return 0


@contextlib.asynccontextmanager
async def _metrics(coordinator: Any, config: CoordinatorConfig, sink: Any = None) -> AsyncIterator[None]:
    if not config.metrics_port:
        yield
        return
    from dagon._metrics_http import serve_metrics
    from dagon.core._metrics import CoordinatorMetrics

    metrics = CoordinatorMetrics()
    metrics.bind(coordinator)
    if sink is not None:
        metrics.watch_sink(sink)
    with serve_metrics(metrics.registry, port=config.metrics_port, host=config.metrics_host):
        yield


def _mongo_sink(config: CoordinatorConfig) -> Any:
    """The MongoDB sink ``mongo_url`` asks for (``None``: no sink)."""
    if not config.mongo_url:
        return None
    from dagon.core._mongo import MongoSink

    return MongoSink(
        config.mongo_url,
        database=config.mongo_db,
        max_buffer=config.mongo_buffer,
        batch_size=min(500, config.mongo_buffer),
    )


def _maybe(manager: Any) -> Any:
    return manager if manager is not None else contextlib.nullcontext()


def _broker(args: argparse.Namespace, settings: CliSettings) -> int:
    from dagon._embedded import EmbeddedBroker

    async def start(stop: asyncio.Event) -> None:
        async with EmbeddedBroker(port=args.port) as broker:
            Console(stderr=True).print(
                f"embedded MQTT 3.1.1 broker on {broker.url} (loopback only); clients need"
                " DAGON_MQTT_PROTOCOL=3.1.1. Ctrl-C stops it."
            )
            await stop.wait()

    asyncio.run(serve(start))
    return 0


def _broker_config(args: argparse.Namespace, settings: CliSettings) -> int:
    from dagon._brokerconfig import generate_broker_config

    bundle = generate_broker_config(
        args.directory,
        agents=args.agent,
        coordinators=args.coordinator or ["main"],
        clients=args.client,
        port=args.port,
        listen=args.listen,
        server_names=args.server_name or ["localhost", "127.0.0.1"],
    )
    out = sys.stdout
    out.write(f"wrote {bundle.config} and {bundle.acl}\n  start: mosquitto -c {bundle.config}\n")
    for identity, (cert, key) in bundle.identities.items():
        out.write(f"  {identity}: DAGON_MQTT_CA={bundle.ca} DAGON_MQTT_CERT={cert} DAGON_MQTT_KEY={key}\n")
    out.write(f"  broker URL: mqtts://HOST:{bundle.port} (HOST must be one of the server names)\n")
    return 0
