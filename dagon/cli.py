"""The ``dagon`` command line.

Exit codes: 0 success, 1 a workflow ran and failed, 2 bad usage, invalid
workflow or unreachable service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import runpy
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import dagon
from dagon._keys import coordinator_signer, coordinator_trust, warn_insecure
from dagon._settings import broker_from_env, dagon_home, insecure_from_env
from dagon._workflow import RunnerContext, runner_context
from dagon.core import Workflow as CoreWorkflow
from dagon.protocol import (
    SCHEMA_RUN_STATUS,
    AgentId,
    Announce,
    Codec,
    ConfigError,
    DagonError,
    Offline,
    ProtocolError,
    decode_public,
    fingerprint,
    public_key_line,
    raw_public_key,
    topics,
)
from dagon.protocol.transport import MqttAuth, MqttTransport, redact_url

__all__ = ["main"]

log = logging.getLogger("dagon.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dagon", description="Run workflows across the compute continuum.")
    p.add_argument("--version", action="version", version=f"dagon {dagon.__version__}")
    p.add_argument("--log-level", default=os.environ.get("DAGON_LOG_LEVEL", "WARNING"), help="logging level")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def broker_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--broker", help="mqtt:// or mqtts:// URL (default: $DAGON_BROKER)")

    def insecure_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--insecure",
            action="store_true",
            default=None,
            help="neither sign nor verify messages (development only; default: $DAGON_INSECURE)",
        )

    run = sub.add_parser("run", help="run a workflow script with live progress")
    run.add_argument("file", type=Path)
    broker_arg(run)
    run.add_argument("--dry-run", action="store_true", help="validate and print the plan; run nothing")
    run.add_argument(
        "--fetch-outputs", type=Path, metavar="DIR",
        help="copy the outputs of the final tasks (those no task consumes) to DIR/WORKFLOW/TASK/",
    )  # fmt: skip
    insecure_arg(run)
    run.epilog = "Arguments dagon does not know (or everything after --) are passed to the script."

    submit = sub.add_parser("submit", help="hand a workflow script to a standalone coordinator")
    submit.add_argument("file", type=Path)
    broker_arg(submit)
    submit.add_argument("--coordinator", default="auto", help="coordinator id (default: the online one)")
    submit.add_argument("--wait", action="store_true", help="follow the run until it ends")
    insecure_arg(submit)

    coord = sub.add_parser("coordinator", help="run a standalone coordinator service")
    broker_arg(coord)
    coord.add_argument("--id", default="main", help="coordinator id (default: main)")
    coord.add_argument("--heartbeat-ttl", type=float, default=15.0, help="seconds before a silent agent is lost")
    coord.add_argument(
        "--requeue-grace", type=float, default=10.0,
        help="seconds the tasks of an agent whose Last Will arrived wait for it to reconnect before running"
        " elsewhere (default: 10; a restarting broker publishes every agent's Will)",
    )  # fmt: skip
    coord.add_argument("--relay-host", default="127.0.0.1", help="address the data relay binds (default: loopback)")
    coord.add_argument("--relay-port", type=int, default=0, help="data relay port (default: any free one)")
    coord.add_argument("--relay-url", help="URL agents use for the relay (default: http://RELAY_HOST:PORT)")
    coord.add_argument(
        "--relay-tls-cert", type=Path,
        help="serve the relay and checkpoint storage over HTTPS with this certificate (with --relay-tls-key;"
        " agents verify it with their data_tls_ca)",
    )  # fmt: skip
    coord.add_argument("--relay-tls-key", type=Path, help="private key of --relay-tls-cert")
    coord.add_argument(
        "--enrolled-agents-only",
        action="store_true",
        help="accept only agents whose keys are in keys/known_agents (default: pin new agents' keys on first sight)",
    )
    insecure_arg(coord)

    keys = sub.add_parser("keys", help="manage this coordinator's keys and whom it trusts")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = keys_sub.add_parser("init", help="create the coordinator key pair in $DAGON_HOME/keys")
    init.add_argument("--force", action="store_true", help="replace an existing pair (agents must re-enroll)")
    keys_sub.add_parser("show", help="print the coordinator public key and its fingerprint")
    keys_sub.add_parser("client", help="print this home's client key, to enroll with `dagon keys trust-client`")
    trust_client = keys_sub.add_parser("trust-client", help="accept runs submitted with this client key")
    trust_client.add_argument("pubkey", type=Path)
    trust_agent = keys_sub.add_parser("trust-agent", help="pin an agent's key (see `dagon-agent key`)")
    trust_agent.add_argument("agent")
    trust_agent.add_argument("pubkey", type=Path)

    runs = sub.add_parser("runs", help="list the runs recorded in $DAGON_HOME's run store")
    runs.add_argument("--limit", type=int, default=20, help="most recent N runs (default: 20)")
    runs.add_argument("--json", action="store_true")
    coord.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0: off)")
    coord.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics server")
    coord.add_argument(
        "--mongo-url",
        help="also write runs, tasks and telemetry to this MongoDB (env DAGON_MONGO_URL; needs dagon[mongo])",
    )
    coord.add_argument("--mongo-db", help="MongoDB database for --mongo-url (env DAGON_MONGO_DB; default: dagon)")
    coord.add_argument(
        "--mongo-buffer",
        type=int,
        help="documents kept while MongoDB is unreachable (env DAGON_MONGO_BUFFER; default 100000, ~1.3 KB each)",
    )

    status = sub.add_parser("status", help="show a run")
    status.add_argument("run")
    broker_arg(status)
    status.add_argument("--json", action="store_true")

    resume = sub.add_parser(
        "resume", help="run again what did not succeed in a run (interrupted, failed or cancelled), keeping the rest"
    )
    resume.add_argument("run")
    broker_arg(resume)
    resume.add_argument(
        "--coordinator", help="have this standalone coordinator resume a run of its store (default: this process)"
    )
    insecure_arg(resume)

    gc = sub.add_parser("gc", help="remove leftovers of finished runs from the agents' scratch roots")
    broker_arg(gc)
    insecure_arg(gc)
    gc.add_argument("runs", nargs="*", help="only these runs (default: every finished run of $DAGON_HOME's store)")
    gc.add_argument("--id", default="main", help="the coordinator id whose store and key to use (default: main)")

    agents = sub.add_parser("agents", help="list online agents and their capabilities")
    broker_arg(agents)
    agents.add_argument("--json", action="store_true")
    agents.add_argument("--all", action="store_true", help="include offline agents")

    bconf = sub.add_parser("broker-config", help="write a Mosquitto config with TLS client certificates and an ACL")
    bconf.add_argument("directory", type=Path)
    bconf.add_argument("--agent", action="append", default=[], help="agent id (repeat; run again to add more)")
    bconf.add_argument("--coordinator", action="append", default=[], help="coordinator id (default: main)")
    bconf.add_argument("--client", action="append", default=[], help="client name allowed to submit runs")
    bconf.add_argument("--port", type=int, default=8883)
    bconf.add_argument("--listen", default="127.0.0.1", help="address the broker binds (default: loopback only)")
    bconf.add_argument(
        "--server-name", action="append", default=[], help="DNS name or IP clients use for the broker (repeat)"
    )
    graph = sub.add_parser("graph", help="export a workflow script's graph (Mermaid, Graphviz DOT, CWL v1.2)")
    graph.add_argument("file", type=Path)
    graph.add_argument("--format", choices=("mermaid", "dot", "cwl"), default="mermaid")
    graph.add_argument("--workflow", help="only this workflow (the script may define several)")
    graph.add_argument("-o", "--output", type=Path, help="write to this file (default: stdout)")

    broker = sub.add_parser("broker", help="run the embedded MQTT broker (development)")
    broker.add_argument("--port", type=int, default=1883)

    watch = sub.add_parser("watch", help="follow a run live: tasks by state, running tasks, agents' CPU/memory/power")
    watch.add_argument("run")
    broker_arg(watch)
    watch.add_argument(
        "--wait", type=float, default=10.0, metavar="SECONDS",
        help="give up when no status of the run arrives within SECONDS (default: 10)",
    )  # fmt: skip

    report = sub.add_parser("report", help="write an HTML report of a run (Gantt chart per agent, energy per task)")
    report.add_argument("run")
    report.add_argument("-o", "--output", type=Path, help="HTML file to write (default: report-RUN.html)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # Flags may follow the script (`dagon run wf.py --broker URL`); what dagon does
    # not know goes to the script, as does everything after `--`.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.args = extra[1:] if extra[:1] == ["--"] else extra
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _cmd_run,
        "submit": _cmd_submit,
        "coordinator": _cmd_coordinator,
        "status": _cmd_status,
        "resume": _cmd_resume,
        "runs": _cmd_runs,
        "agents": _cmd_agents,
        "broker": _cmd_broker,
        "keys": _cmd_keys,
        "broker-config": _cmd_broker_config,
        "graph": _cmd_graph,
        "gc": _cmd_gc,
        "watch": _cmd_watch,
        "report": _cmd_report,
    }
    if getattr(args, "insecure", None):
        os.environ["DAGON_INSECURE"] = "1"  # reaches the Workflow.run() calls of the script too
    try:
        return handlers[args.command](args)
    except DagonError as exc:
        # escaped: "pip install 'dagon[mongo]'" must not be read as rich markup
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted:[/] running tasks were stopped", highlight=False)
        return 130


# -- running scripts -----------------------------------------------------------


def _exec_script(path: Path, argv: list[str], ctx: RunnerContext) -> dict[str, Any]:
    if not path.is_file():
        raise DagonError(f"workflow script {str(path)!r} does not exist")
    token = runner_context.set(ctx)
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *argv]
    sys.path.insert(0, str(path.resolve().parent))
    try:
        return runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
        runner_context.reset(token)


def _workflows_in(namespace: dict[str, Any]) -> list[CoreWorkflow]:
    seen: list[CoreWorkflow] = []
    for value in namespace.values():
        if isinstance(value, CoreWorkflow) and all(value is not w for w in seen):
            seen.append(value)
    return seen


def _cmd_run(args: argparse.Namespace) -> int:
    ctx = RunnerContext(
        broker=broker_from_env(args.broker), dry_run=args.dry_run, progress=True, fetch_outputs=args.fetch_outputs
    )
    namespace = _exec_script(args.file, args.args, ctx)
    if not ctx.results and not ctx.planned:
        # The script built workflows but did not run them: run what it defined.
        workflows = _workflows_in(namespace)
        if not workflows:
            raise DagonError(f"{args.file} defines no dagon Workflow")
        token = runner_context.set(ctx)
        try:
            if any(wf.graph(external=True).external for wf in workflows):
                # They reference each other: one meta-workflow on one coordinator.
                dagon.MetaWorkflow(args.file.stem, workflows).run(check=False)
            else:
                for wf in workflows:
                    dagon.Workflow.run(wf)  # type: ignore[arg-type]
        finally:
            runner_context.reset(token)
    return 0 if all(r.ok for r in ctx.results) else 1


def _cmd_submit(args: argparse.Namespace) -> int:
    broker = broker_from_env(args.broker)
    if broker is None:
        raise DagonError("dagon submit needs a broker with a coordinator: pass --broker URL or set DAGON_BROKER")
    ctx = RunnerContext(broker=broker, capture=True)
    namespace = _exec_script(args.file, [], ctx)
    workflows = ctx.captured or _workflows_in(namespace)
    if not workflows:
        raise DagonError(f"{args.file} defines no dagon Workflow")
    if any(wf.graph(external=True).external for wf in workflows):
        from dagon.core._meta import meta_order

        workflows = meta_order(workflows)  # producers first: the coordinator resolves references on arrival
    return asyncio.run(_submit(broker, args.coordinator, workflows, wait=args.wait))


async def _submit(broker: str, coordinator: str, workflows: list[CoreWorkflow], *, wait: bool) -> int:
    from dagon._progress import follow, summary_table

    ok = True
    async with dagon.connect(broker, coordinator=coordinator) as client:
        handles = []
        for wf in workflows:
            handle = await client.submit(wf)
            sys.stdout.write(f"{handle.id}\n")
            sys.stdout.flush()
            handles.append((handle, len(wf)))
        if wait:
            for handle, total in handles:
                result = await follow(handle, total=total, console=Console(stderr=True))
                Console().print(summary_table(result))
                ok = ok and result.ok
    return 0 if ok else 1


def _cmd_graph(args: argparse.Namespace) -> int:
    from dagon._export import export

    ctx = RunnerContext(capture=True)  # the script's run() calls collect workflows; nothing runs
    with contextlib.redirect_stdout(sys.stderr):  # what the script prints must not mix with the graph
        namespace = _exec_script(args.file, [], ctx)
    workflows = ctx.captured or _workflows_in(namespace)
    if args.workflow:
        workflows = [wf for wf in workflows if wf.name == args.workflow]
    if not workflows:
        which = f" named {args.workflow!r}" if args.workflow else ""
        raise DagonError(f"{args.file} defines no dagon Workflow{which}")
    try:
        text = export(workflows, args.format)
    except ValueError as exc:
        raise DagonError(str(exc)) from None
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


# -- services --------------------------------------------------------------------


async def _serve(start: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await start(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _require_broker(args: argparse.Namespace, what: str) -> str:
    broker = broker_from_env(args.broker)
    if broker is None:
        raise DagonError(
            f"{what} needs a broker: pass --broker mqtt://HOST:PORT or set DAGON_BROKER"
            " (for development, 'dagon broker' runs one)"
        )
    return broker


def _relay_tls(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise DagonError("--relay-tls-cert and --relay-tls-key go together: pass both, or neither for plain HTTP")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise DagonError(f"cannot load the relay certificate {cert} with key {key}: {exc}") from None
    return context


def _cmd_coordinator(args: argparse.Namespace) -> int:
    from dagon.core import Coordinator
    from dagon.core._store import RunStore

    broker = _require_broker(args, "dagon coordinator")
    home = dagon_home()
    protocol = os.environ.get("DAGON_MQTT_PROTOCOL", "5")

    auth = MqttAuth.from_env(os.environ)
    expiry = os.environ.get("DAGON_MQTT_SESSION_EXPIRY", "3600")
    if not expiry.isdigit():
        raise ConfigError(f"DAGON_MQTT_SESSION_EXPIRY must be a whole number of seconds, got {expiry!r}")
    session_expiry = int(expiry)
    insecure = insecure_from_env(args.insecure)
    if insecure:
        warn_insecure(log)
        signer, trust = None, None
    else:
        signer = coordinator_signer(home)
        trust = coordinator_trust(home, accept_new_agents=not args.enrolled_agents_only)
        log.warning("coordinator key %s", fingerprint(signer.public_key))
    sink = _mongo_sink(args)  # a missing pymongo or a bad URL fails here, before anything starts

    relay_tls = _relay_tls(args.relay_tls_cert, args.relay_tls_key)

    async def start(stop: asyncio.Event) -> None:
        store = RunStore(home / "runs.sqlite")
        try:
            coordinator = Coordinator(
                connect=lambda will: MqttTransport(
                    broker,
                    client_id=f"dagon-coordinator-{args.id}",
                    will=will,
                    protocol=protocol,
                    auth=auth,
                    # The broker keeps the session (and queues QoS 1 reports) while the connection is down.
                    session_expiry=session_expiry,
                ),
                coordinator_id=args.id,
                store=store,
                heartbeat_ttl=args.heartbeat_ttl,
                requeue_grace=args.requeue_grace,
                signer=signer,
                trust=trust,
                insecure=insecure,
                relay_dir=home / "relay",
                relay_host=args.relay_host,
                relay_port=args.relay_port,
                relay_tls=relay_tls,
                relay_url=args.relay_url,
            )
            if sink is not None:
                coordinator.add_listener(sink)
            async with _maybe(sink), coordinator, _coordinator_metrics(coordinator, args, sink):
                log.warning("coordinator %r serving on %s (store %s)", args.id, redact_url(broker), store.path)
                await stop.wait()
        finally:
            store.close()

    asyncio.run(_serve(start))
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from dagon import _keys

    home = dagon_home()
    directory = _keys.keys_dir(home)
    out = sys.stdout
    if args.keys_command == "init":
        existing = directory / "coordinator.key"
        if existing.exists() and not args.force:
            raise DagonError(f"{existing} already exists; `dagon keys show` prints it (--force replaces it)")
        if args.force:
            for name in ("coordinator.key", "coordinator.pub"):
                (directory / name).unlink(missing_ok=True)
        signer = _keys.coordinator_signer(home)
        out.write(f"created {existing}\n")
    elif args.keys_command == "show":
        signer = _keys.coordinator_signer(home)
    elif args.keys_command == "client":
        signer = _keys.client_signer(home)
        own = _keys.load_or_create(home, "coordinator", create=False)
        name = "coordinator.pub" if own is not None and own.key_id == signer.key_id else "client.pub"
        out.write(f"{directory / name}\n{public_key_line(signer.public_key, 'dagon-client')}")
        out.write(f"fingerprint {fingerprint(signer.public_key)}\n")
        out.write("on the coordinator's machine: dagon keys trust-client client.pub\n")
        return 0
    elif args.keys_command == "trust-client":
        target = _keys.enroll(home, args.pubkey, kind="clients")
        out.write(f"accepting runs signed by {fingerprint(_keys.read_public_key(target))} ({target})\n")
        return 0
    else:
        key = _keys.read_public_key(args.pubkey)
        trust = _keys.coordinator_trust(home)
        pinned = trust.pinned(args.agent)
        if pinned is not None and pinned != raw_public_key(key):
            raise DagonError(
                f"agent {args.agent!r} is already pinned to {fingerprint(pinned)} in {directory / 'known_agents'};"
                " remove that line first"
            )
        trust.pin(AgentId(args.agent), raw_public_key(key))
        out.write(f"agent {args.agent} pinned to {fingerprint(key)}\n")
        return 0
    out.write(f"{directory / 'coordinator.pub'}\n")
    out.write(public_key_line(signer.public_key, "dagon-coordinator"))
    out.write(f"fingerprint {fingerprint(signer.public_key)}\n")
    out.write("on each agent's machine: dagon-agent enroll coordinator.pub\n")
    return 0


def _cmd_broker_config(args: argparse.Namespace) -> int:
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


@contextlib.asynccontextmanager
async def _coordinator_metrics(coordinator: Any, args: argparse.Namespace, sink: Any = None) -> AsyncIterator[None]:
    if not args.metrics_port:
        yield
        return
    from dagon._metrics_http import serve_metrics
    from dagon.core._metrics import CoordinatorMetrics

    metrics = CoordinatorMetrics()
    metrics.bind(coordinator)
    if sink is not None:
        metrics.watch_sink(sink)
    with serve_metrics(metrics.registry, port=args.metrics_port, host=args.metrics_host):
        yield


def _mongo_sink(args: argparse.Namespace) -> Any:
    """The MongoDB sink ``--mongo-url``/``DAGON_MONGO_URL`` asks for (``None``: no sink)."""
    url = args.mongo_url or os.environ.get("DAGON_MONGO_URL", "")
    if not url:
        if args.mongo_db or args.mongo_buffer is not None:
            raise DagonError("--mongo-db and --mongo-buffer need --mongo-url (or DAGON_MONGO_URL)")
        return None
    from dagon.core._mongo import MongoSink

    buffer = args.mongo_buffer
    if buffer is None:
        text = os.environ.get("DAGON_MONGO_BUFFER", "100000")
        try:
            buffer = int(text)
        except ValueError:
            raise DagonError(f"DAGON_MONGO_BUFFER={text!r}: expected a number of documents") from None
    if buffer < 1:
        raise DagonError(f"--mongo-buffer {buffer}: must be at least 1 (documents kept during an outage)")
    return MongoSink(
        url,
        database=args.mongo_db or os.environ.get("DAGON_MONGO_DB") or "dagon",
        max_buffer=buffer,
        batch_size=min(500, buffer),
    )


def _maybe(manager: Any) -> Any:
    return manager if manager is not None else contextlib.nullcontext()


def _cmd_broker(args: argparse.Namespace) -> int:
    from dagon._embedded import EmbeddedBroker

    async def start(stop: asyncio.Event) -> None:
        async with EmbeddedBroker(port=args.port) as broker:
            Console(stderr=True).print(
                f"embedded MQTT 3.1.1 broker on {broker.url} (loopback only); clients need"
                " DAGON_MQTT_PROTOCOL=3.1.1. Ctrl-C stops it."
            )
            await stop.wait()

    asyncio.run(_serve(start))
    return 0


# -- inspection ------------------------------------------------------------------


async def _retained(broker: str, filter_: str, *, quiet: float = 0.5, limit: float = 3.0) -> list[tuple[str, bytes]]:
    """Collect the retained messages matching ``filter_`` (until quiet for ``quiet`` s)."""
    protocol = os.environ.get("DAGON_MQTT_PROTOCOL", "5")
    client_id = f"dagon-cli-{os.getpid()}-{os.urandom(2).hex()}"
    found: list[tuple[str, bytes]] = []
    auth = MqttAuth.from_env(os.environ)
    async with MqttTransport(broker, client_id=client_id, protocol=protocol, auth=auth) as transport:
        await transport.subscribe(filter_)
        deadline = time.monotonic() + limit
        messages = transport.messages()
        while time.monotonic() < deadline:
            try:
                async with asyncio.timeout(quiet):
                    msg = await anext(messages)
            except TimeoutError:
                break
            if msg.payload:
                found.append((msg.topic, msg.payload))
    return found


def _cmd_resume(args: argparse.Namespace) -> int:
    from dagon._progress import follow, summary_table

    broker = broker_from_env(args.broker)
    if args.coordinator and broker is None:
        raise DagonError("resuming on a standalone coordinator needs its broker: pass --broker URL or set DAGON_BROKER")

    async def resume() -> int:
        async with dagon.connect(broker, coordinator=args.coordinator, insecure=args.insecure) as client:
            handle = await client.resume(args.run)
            sys.stderr.write(f"resuming run {handle.id}\n")
            total = len(client.coordinator.engine.run(handle.id).tasks) if client.coordinator is not None else 0
            result = await follow(handle, total=total, console=Console(stderr=True))
            Console().print(summary_table(result))
            return 0 if result.ok else 1

    return asyncio.run(resume())


def _cmd_status(args: argparse.Namespace) -> int:
    broker = broker_from_env(args.broker)
    doc: dict[str, Any] | None = None
    if broker is not None:
        for _topic, payload in asyncio.run(_retained(broker, topics.run_status(args.run))):
            with contextlib.suppress(ProtocolError):
                doc = decode_public(payload, schema=SCHEMA_RUN_STATUS)
    if doc is None:
        doc = _status_from_store(args.run)
    if doc is None:
        raise DagonError(f"no run {args.run!r} found" + (" on the broker" if broker else f" in {dagon_home()}"))
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    console = Console()
    console.print(f"run [bold]{doc['run']}[/] ({doc.get('workflow', '?')}): [bold]{doc['state']}[/]")
    if doc.get("cause"):
        console.print(f"  {doc['cause']}")
    counts = doc.get("counts") or {}
    console.print("  " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    peaks = doc.get("scratch_peak") or {}
    if peaks:
        console.print("  peak scratch (task outputs): " + ", ".join(f"{a} {n:,} B" for a, n in sorted(peaks.items())))
    for task in doc.get("task_list", []):
        console.print(f"  {task['name']}: {task['state']} {task.get('cause', '')}")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from dagon.core._store import RunStore

    path = dagon_home() / "runs.sqlite"
    if not path.exists():
        raise DagonError(f"no run store in {dagon_home()} (set DAGON_HOME to the coordinator's home)")
    store = RunStore(path)
    try:
        records = store.list_runs(limit=max(1, args.limit))
    finally:
        store.close()
    if args.json:
        rows = [
            {"run": r.id, "workflow": r.workflow, "state": r.state, "cause": r.cause,
             "submitted_at": r.submitted_at, "finished_at": r.finished_at}
            for r in records
        ]  # fmt: skip
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    table = Table(title=f"{len(records)} most recent run(s) in {path}")
    for col in ("run", "workflow", "state", "submitted", "took", "cause"):
        table.add_column(col)
    for r in records:
        took = f"{r.finished_at - r.submitted_at:.1f} s" if r.finished_at else ""
        submitted = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.submitted_at))
        table.add_row(r.id, r.workflow, r.state, submitted, took, r.cause[:60])
    Console().print(table)
    return 0


def _status_from_store(run: str) -> dict[str, Any] | None:
    from dagon.core._store import RunStore

    path = dagon_home() / "runs.sqlite"
    if not path.exists():
        return None
    store = RunStore(path)
    try:
        record = store.get_run(run)
        if record is None:
            return None
        tasks = store.tasks(run)
    finally:
        store.close()
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t.state] = counts.get(t.state, 0) + 1
    return {
        "schema": SCHEMA_RUN_STATUS,
        "run": record.id,
        "workflow": record.workflow,
        "state": record.state,
        "cause": record.cause,
        "counts": counts,
        "submitted_at": record.submitted_at,
        "finished_at": record.finished_at,
        "task_list": [{"name": t.name, "state": t.state, "cause": t.cause} for t in tasks],
    }


def _cmd_gc(args: argparse.Namespace) -> int:
    from dagon._gc import finished_runs, send_gc
    from dagon.protocol import RunId

    broker = _require_broker(args, "dagon gc")
    home = dagon_home()
    finished = finished_runs(home)
    if args.runs:
        unknown = sorted(set(args.runs) - set(finished))
        if unknown:
            raise DagonError(
                f"run(s) {', '.join(unknown)} are not finished runs of the store in {home}: run `dagon gc` where"
                " the coordinator's DAGON_HOME is, and only for finished runs"
            )
        finished = [RunId(r) for r in args.runs]
    retained = asyncio.run(_retained(broker, topics.all_agent_status()))
    insecure = bool(insecure_from_env(args.insecure))
    agents = asyncio.run(send_gc(broker, home, finished, retained, coordinator_id=args.id, insecure=insecure))
    sys.stdout.write(f"asked {len(agents)} agent(s) to remove the scratch of {len(finished)} finished run(s)\n")
    return 0


def _cmd_agents(args: argparse.Namespace) -> int:
    broker = _require_broker(args, "dagon agents")
    codec = Codec(sender="cli")
    rows: list[dict[str, Any]] = []
    for topic, payload in asyncio.run(_retained(broker, topics.all_agent_status())):
        try:
            msg = codec.decode(payload).message
        except ProtocolError as exc:
            log.warning("unreadable agent status on %s: %s", topic, exc)
            continue
        if isinstance(msg, Announce):
            caps = msg.capabilities
            rows.append({"id": msg.agent, "online": True, **{k: getattr(caps, k) for k in caps.__slots__}})
        elif isinstance(msg, Offline) and args.all:
            rows.append({"id": msg.agent, "online": False, "reason": msg.reason})
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2, default=list) + "\n")
        return 0
    table = Table(title=f"{sum(r['online'] for r in rows)} agent(s) online")
    for col in ("id", "host", "arch", "cpus", "memory", "slots", "runtimes", "labels"):
        table.add_column(col)
    for r in rows:
        if not r["online"]:
            table.add_row(r["id"], "[red]offline[/]", "", "", "", "", "", r.get("reason", ""))
            continue
        labels = ",".join(f"{k}={v}" for k, v in r["labels"].items())
        mem = f"{r['memory'] / 2**30:.1f} GiB"
        table.add_row(
            r["id"], r["hostname"], r["arch"], str(r["cpus"]), mem, str(r["slots"]), ",".join(r["runtimes"]), labels
        )
    Console().print(table)
    return 0


# -- watch and report ----------------------------------------------------------------


def _cmd_watch(args: argparse.Namespace) -> int:
    broker = _require_broker(args, "dagon watch")
    try:
        return asyncio.run(_watch(broker, args.run, wait=args.wait))
    except KeyboardInterrupt:
        return 130  # the run goes on: watching is read-only


async def _watch(broker: str, run: str, *, wait: float) -> int:
    import shutil

    from dagon._watch import WatchState, watch

    protocol = os.environ.get("DAGON_MQTT_PROTOCOL", "5")
    client_id = f"dagon-watch-{os.getpid()}-{os.urandom(2).hex()}"
    auth = MqttAuth.from_env(os.environ)
    async with MqttTransport(broker, client_id=client_id, protocol=protocol, auth=auth) as transport:
        await transport.subscribe(
            topics.run_status(run), topics.run_events(run), topics.run_task_results(run),
            topics.all_agent_telemetry_json(),
        )  # fmt: skip

        async def messages() -> AsyncIterator[tuple[str, bytes]]:
            async for msg in transport.messages():
                yield msg.topic, msg.payload

        tty = sys.stdout.isatty()
        width = shutil.get_terminal_size((100, 24)).columns if tty else 200
        try:
            return await watch(messages(), WatchState(run), sys.stdout, tty=tty, width=width, first_status_timeout=wait)
        except TimeoutError as exc:
            raise DagonError(f"{exc} on {redact_url(broker)}: check the run id (`dagon runs`) and the broker") from None


def _cmd_report(args: argparse.Namespace) -> int:
    from dagon._report import load_report, render_html

    report = load_report(dagon_home() / "runs.sqlite", args.run)
    output: Path = args.output or Path(f"report-{args.run}.html")
    try:
        output.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise DagonError(f"cannot write the report to {output}: {exc}") from exc
    sys.stdout.write(f"{output}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
