#!/usr/bin/env python3
"""The original DAGonStar edge-fog evaluation, reproduced on one machine.

The original: a DHT11 on an Arduino, read over USB serial (9600 baud) by a Raspberry Pi 5 for
300 s (task A, edge), preprocessed on a fog PC (task B), exported to MongoDB (task C), with
energy measured per run, once per container runtime. Here:

* a simulated Arduino on a pseudo-terminal speaks the original sketch's lines at 9600 baud
  (``arduino.py``); its port gets a stable name, like ``/dev/ttyACM0`` on the Pi;
* a local broker (Mosquitto when installed, else dagon's embedded one), a coordinator in this
  process, and two real ``dagon-agent`` processes: ``edge`` (``labels site=edge``, announcing the
  serial port) and ``fog`` (``labels site=fog``, with whatever container runtimes work here);
* A is ``wf.sensor`` (placed on the edge agent because only it has the port), B turns
  ``workflow:///capture/readings.jsonl`` into the original's summary with ``awk`` — as a plain
  process, then inside each container runtime found (Docker when its engine answers,
  Charliecloud when ``ch-run`` is installed, Apptainer when installed; the container image is
  built locally from busybox-static, nothing is pulled) — and C stores it in MongoDB when a
  server answers at ``--mongo`` (else C is left out, and the table says so);
* energy per task comes from each agent's power source (RAPL, hwmon, the Pi 5 PMIC, a smart
  plug… or the CPU model on a VM, reported as *modelled*), read from the public task results.

    python examples/edge-fog/simulate.py --duration 10
    python examples/edge-fog/simulate.py --duration 300 --mongo mongodb://127.0.0.1:27017

It prints the original's table: runtime, wall time, overhead over the capture time, energy and
success. Exit status 0 when every run succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from arduino import SimulatedArduino  # noqa: E402

import dagon  # noqa: E402
from dagon.protocol import decode_public, topics  # noqa: E402
from dagon.protocol.transport import MqttTransport  # noqa: E402

RUNTIMES = ("process", "docker", "charliecloud", "apptainer")
ORIGINAL = [  # the original's published figures for a 300 s capture (Docker and Nomad "successes" were not)
    ("apptainer (original)", 314.6, 0.425, "reported"),
    ("docker (original)", 406.5, 0.525, "reported, failed"),
    ("nomad (original)", 485.6, 0.720, "reported, failed"),
]

# Task B: the original's summary (count, mean/min/max humidity and temperature, first and last time),
# in awk so that it runs unchanged on the host and in a busybox container.
PREPROCESS = r"""awk '
function num(key,   m) {
  if (match($0, "\"" key "\":-?[0-9.eE+-]+"))
    return substr($0, RSTART + length(key) + 3, RLENGTH - length(key) - 3) + 0
  return "none"
}
{ h = num("humidity"); t = num("temp_c"); ts = num("ts")
  if (h == "none" || t == "none") next
  n++; sh += h; st += t
  if (n == 1 || h < hmin) hmin = h; if (n == 1 || h > hmax) hmax = h
  if (n == 1 || t < tmin) tmin = t; if (n == 1 || t > tmax) tmax = t
  if (n == 1) t0 = ts; t1 = ts }
END { if (n == 0) { print "no readings to preprocess" > "/dev/stderr"; exit 1 }
  out = "summary.json"
  printf "{\"count\":%d,\"mean_humidity\":%.3f,\"mean_temp_c\":%.3f,", n, sh / n, st / n > out
  printf "\"min_humidity\":%.2f,\"max_humidity\":%.2f,", hmin, hmax > out
  printf "\"min_temp_c\":%.2f,\"max_temp_c\":%.2f,", tmin, tmax > out
  printf "\"start_time\":%.3f,\"end_time\":%.3f}\n", t0, t1 > out
  printf "preprocessed %d readings\n", n }
' workflow:///capture/readings.jsonl"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the broker exited at once (status {proc.returncode})")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _start(argv: list[str], log: Path, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def local_broker(workdir: Path) -> AsyncIterator[tuple[str, str]]:
    """(URL, MQTT version): Mosquitto on loopback when installed, else the embedded broker."""
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        from dagon._embedded import EmbeddedBroker

        async with EmbeddedBroker(port=0) as broker:
            yield broker.url, "3.1.1"
        return
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = await asyncio.to_thread(_start, [binary, "-c", str(conf)], workdir / "mosquitto.log", None)
    try:
        await asyncio.to_thread(_wait_port, port, proc)
        yield f"mqtt://127.0.0.1:{port}", "5"
    finally:
        await asyncio.to_thread(_stop, proc)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from dagon.cli import main; sys.exit(main())", *args]


def _agent_cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from dagon.cli import agent_main; sys.exit(agent_main())", *args]


def _env(home: Path, protocol: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGON_")}
    env.update(DAGON_HOME=str(home), DAGON_MQTT_PROTOCOL=protocol, DAGON_TELEMETRY_INTERVAL="1")
    return env


@contextlib.asynccontextmanager
async def agents(
    workdir: Path, url: str, protocol: str, port_link: Path, coordinator_home: Path
) -> AsyncIterator[None]:
    """The edge and fog ``dagon-agent`` processes, enrolled with this coordinator's key."""
    edge = ["--labels", "site=edge", "--devices", f"serial:{port_link}", "--runtimes", "none", "--slots", "1"]
    fog = ["--labels", "site=fog", "--runtimes", "auto", "--slots", "2"]
    started: list[subprocess.Popen[bytes]] = []
    try:
        for name, flags in (("edge", edge), ("fog", fog)):
            home = workdir / name
            env = _env(home, protocol)
            enroll = _agent_cli("enroll", str(coordinator_home / "keys" / "coordinator.pub"), "--yes")
            await asyncio.to_thread(subprocess.run, enroll, env=env, check=True, capture_output=True)
            # ... and the coordinator admits the agent's key (as `dagon agents approve NAME` would, once it runs)
            key = await asyncio.to_thread(subprocess.run, _agent_cli("key"), env=env, check=True, capture_output=True)
            (workdir / f"{name}.pub").write_bytes(key.stdout)
            trust = _cli("keys", "trust-agent", name, str(workdir / f"{name}.pub"))
            await asyncio.to_thread(
                subprocess.run, trust, env=_env(coordinator_home, protocol), check=True, capture_output=True
            )
            argv = _agent_cli("--broker", url, "--id", name, "--scratch", str(home / "scratch"), *flags)
            started.append(await asyncio.to_thread(_start, argv, workdir / f"{name}.log", env))
        yield
    finally:
        for proc in started:
            await asyncio.to_thread(_stop, proc)


def busybox_image(root: Path) -> Path | None:
    """A container image directory from busybox-static (no registry needed), or None without one."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.access(busybox, os.X_OK):
        return None
    if subprocess.run(["ldd", busybox], capture_output=True, text=True, check=False).returncode == 0:
        return None  # dynamically linked: useless inside an empty image (apt install busybox-static)
    for d in ("bin", "tmp", "dev", "proc", "sys", "etc", "home", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split():
        link = root / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (root / "tmp").chmod(0o1777)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    return root


def docker_image(rootfs: Path) -> str | None:
    """Import the busybox tree as ``dagon-example/busybox`` into the running Docker engine."""
    if shutil.which("docker") is None:
        return None
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    done = subprocess.run(["docker", "import", "-", "dagon-example/busybox:latest"], stdin=tar.stdout,
                          capture_output=True, check=False)  # fmt: skip
    tar.wait()
    return "dagon-example/busybox:latest" if done.returncode == 0 else None


def mongo_reachable(uri: str) -> str:
    """ "" when a MongoDB server answers at ``uri``, else why not."""
    try:
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError
    except ImportError:
        return "pymongo is not installed (pip install 'dagon-engine[mongo]')"
    try:
        with MongoClient(uri, serverSelectionTimeoutMS=1500) as client:
            client.admin.command("ping")
    except PyMongoError as exc:
        return f"no MongoDB answers at {uri} ({type(exc).__name__})"
    return ""


def build(runtime: str, *, duration: float, port: Path, image: str | None, mongo: str | None) -> dagon.Workflow:
    wf = dagon.Workflow(f"edge-fog-{runtime}")
    wf.sensor("capture", f"serial://{port}?baud=9600", duration=duration, parse="arduino", labels={"site": "edge"})
    if runtime == "process":
        wf.shell("preprocess", PREPROCESS, labels={"site": "fog"})
    else:
        wf.container("preprocess", image=image or "", command=PREPROCESS, runtime=runtime, labels={"site": "fog"})
    if mongo:
        export = HERE / "export.py"
        command = (f"{sys.executable} {export} workflow:///preprocess/summary.json workflow:///capture/readings.jsonl"
                   f" --mongo '{mongo}' --execution \"$DAGON_RUN\"")  # fmt: skip
        wf.shell("export", command, labels={"site": "fog"})
    return wf


class Public:
    """What the public JSON topics said: task results per run, and each node's energy counter."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.energy: dict[str, list[tuple[float, float, bool]]] = {}  # agent -> (ts, joules total, measured)
        self._changed = asyncio.Event()

    async def until(self, done: Callable[[], bool]) -> None:
        """Return once ``done()`` holds (checked after every message)."""
        while not done():
            await self._changed.wait()
            self._changed.clear()

    async def read(self, transport: MqttTransport) -> None:
        async for msg in transport.messages():
            self._changed.set()
            with contextlib.suppress(Exception):
                doc = decode_public(msg.payload)
                if doc["schema"].startswith("dagon.task-result/"):
                    self.results.setdefault(doc["run"], {})[doc["task"]] = doc
                elif doc["schema"].startswith("dagon.telemetry/") and doc.get("power"):
                    power = doc["power"]
                    self.energy.setdefault(doc["agent"], []).append(
                        (doc["ts"], power["energy_joules_total"], power["measured"])
                    )

    def node_energy(self, agent: str, start: float, end: float) -> tuple[float, bool] | None:
        """Joules the node used from ``start`` to ``end`` (wall clock), from the samples around them."""
        samples = self.energy.get(agent, [])
        before = [s for s in samples if s[0] <= start]
        after = [s for s in samples if s[0] >= end]
        if not before or not after:
            return None
        (t0, j0, m0), (t1, j1, m1) = before[-1], after[0]
        return (j1 - j0) * (end - start) / (t1 - t0), m0 and m1  # scaled to the run's own window


async def run_all(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    mongo_problem = await asyncio.to_thread(mongo_reachable, args.mongo) if args.mongo else "no --mongo given"
    print(f"MongoDB: {'export to ' + args.mongo if not mongo_problem else 'export skipped: ' + mongo_problem}")
    coordinator_home = workdir / "coordinator"
    keys = _cli("keys", "init")
    await asyncio.to_thread(subprocess.run, keys, env=_env(coordinator_home, "5"), check=True, capture_output=True)
    image_dir = await asyncio.to_thread(busybox_image, workdir / "image")
    async with local_broker(workdir) as (url, protocol):
        print(f"broker: {url} (MQTT {protocol})")
        with SimulatedArduino(period=1.0, link=workdir / "ttyACM0") as arduino:
            print(f"simulated Arduino: {arduino.link} -> {arduino.port} (9600 baud)")
            async with agents(workdir, url, protocol, arduino.link, coordinator_home):
                client = dagon.connect(url, home=coordinator_home, mqtt_protocol=protocol, insecure=False)
                seen = Public()
                public = MqttTransport(url, client_id=f"edge-fog-results-{os.getpid()}", protocol=protocol)
                async with client, public:
                    await public.subscribe(topics.all_run_task_results(), topics.all_agent_telemetry_json())
                    reader = asyncio.create_task(seen.read(public))
                    assert client.coordinator is not None
                    async with asyncio.timeout(60):
                        await client.coordinator.wait_for_agents(2)
                        await seen.until(lambda: "edge" in seen.energy)  # a power sample before the first run
                    fog = next(a for a in client.coordinator.engine.agents.values() if a.id == "fog")
                    try:
                        for runtime in args.runtimes:
                            rows.append(await one_run(client, runtime, fog.capabilities.runtimes, args, arduino.link,
                                                      image_dir, mongo_problem, seen))  # fmt: skip
                    finally:
                        reader.cancel()
                        await asyncio.gather(reader, return_exceptions=True)
    return rows


async def one_run(client: Any, runtime: str, offered: tuple[str, ...], args: argparse.Namespace, port: Path,
                  image_dir: Path | None, mongo_problem: str, seen: Public) -> dict[str, Any]:  # fmt: skip
    row: dict[str, Any] = {"runtime": runtime, "wall": None, "overhead": None, "energy_wh": None,
                           "measured": None, "success": False, "note": ""}  # fmt: skip
    image: str | None = None
    if runtime != "process":
        if runtime not in offered:
            row["note"] = f"not available on the fog agent (it offers {', '.join(offered)})"
            return row
        if image_dir is None:
            row["note"] = "no static busybox to build an image from (apt install busybox-static)"
            return row
        image = str(image_dir) if runtime in ("charliecloud", "apptainer") else docker_image(image_dir)
        if image is None:
            row["note"] = "could not import the busybox image into Docker"
            return row
    wf = build(runtime, duration=args.duration, port=port, image=image, mongo=None if mongo_problem else args.mongo)
    began, started = time.monotonic(), time.time()
    handle = await client.submit(wf)
    result = await handle.wait()
    wall, ended = time.monotonic() - began, time.time()
    async with asyncio.timeout(15):  # the public results, and a telemetry sample after the end, trail a moment
        await seen.until(lambda: len(seen.results.get(handle.id, {})) >= len(wf)
                         and seen.node_energy("edge", started, ended) is not None)  # fmt: skip
    docs = seen.results[handle.id]
    # Like the original's figure (the Raspberry Pi's energy over the run): the edge node's energy.
    joules, measured = seen.node_energy("edge", started, ended) or (0.0, False)
    capture = result.tasks["capture"]
    row.update(wall=round(wall, 2), overhead=round(wall - args.duration, 2), success=result.ok,
               readings=(capture.value or {}).get("readings", 0), run=handle.id,
               energy_wh=round(joules / 3600, 5), measured=measured,
               task_energy={task: doc.get("energy") for task, doc in docs.items()})  # fmt: skip
    if not result.ok:
        row["note"] = "; ".join(f"{name}: {t.reason()}" for name, t in result.failed.items())
    elif mongo_problem:
        row["note"] = "export skipped (no MongoDB)"
    if not mongo_problem:
        await asyncio.to_thread(store_energy, args.mongo, handle.id, docs)
    return row


def store_energy(uri: str, execution: str, docs: dict[str, dict[str, Any]]) -> None:
    """Like the original, add the energy figures to the run's MongoDB document afterwards."""
    from pymongo import MongoClient

    energy = {task: doc.get("energy") for task, doc in docs.items()}
    with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        client["dagon_edge_fog"]["dht_runs"].update_one({"execution_id": execution}, {"$set": {"energy": energy}})


def table(rows: list[dict[str, Any]], duration: float) -> str:
    head = f"{'runtime':<22} {'wall (s)':>9} {'overhead (s)':>13} {'energy (Wh)':>12} {'':9} {'success':<8} note"
    lines = [f"capture time {duration:g} s", head, "-" * len(head)]
    for r in rows:
        wall = f"{r['wall']:.2f}" if r["wall"] is not None else "-"
        over = f"{r['overhead']:+.2f}" if r["overhead"] is not None else "-"
        wh = f"{r['energy_wh']:.5f}" if r["energy_wh"] is not None else "-"
        kind = "" if r["measured"] is None else "measured" if r["measured"] else "modelled"
        ok = "yes" if r["success"] else "no" if r["wall"] is not None else "skipped"
        lines.append(f"{r['runtime']:<22} {wall:>9} {over:>13} {wh:>12} {kind:9} {ok:<8} {r['note']}")
    lines.append("the original, for a 300 s capture:")
    lines += [
        f"{name:<22} {wall:>9.1f} {wall - 300:>+13.1f} {wh:>12.3f} {'':9} {ok}" for name, wall, wh, ok in ORIGINAL
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The original DAGonStar edge-fog evaluation on one machine.")
    p.add_argument("--duration", type=float, default=300.0, help="capture time in seconds (the original: 300)")
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"which to try (default {','.join(RUNTIMES)})")
    p.add_argument("--mongo", default="mongodb://127.0.0.1:27017/?directConnection=true",
                   help="MongoDB URI for the export (skipped when nothing answers there; '' to skip)")  # fmt: skip
    p.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary directory)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON too (last line)")
    args = p.parse_args(argv)
    args.runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    if not args.duration > 0 or any(r not in RUNTIMES for r in args.runtimes):
        p.error(f"--duration must be > 0 and --runtimes a subset of {','.join(RUNTIMES)}")
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-fog-")))
        workdir.mkdir(parents=True, exist_ok=True)
        rows = asyncio.run(run_all(args, workdir))
    print(table(rows, args.duration))
    if args.json:
        print(json.dumps(rows))
    tried = [r for r in rows if r["wall"] is not None]
    return 0 if tried and all(r["success"] for r in tried) else 1


if __name__ == "__main__":
    raise SystemExit(main())
