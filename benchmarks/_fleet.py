"""Lightweight agents for benchmarks/fleet.py: many agents in one process, each speaking dagon's real
protocol over its own MQTT connection to the real broker.

Each agent is what the coordinator sees of a ``dagon-agent``: its own MQTT client id and Last Will
(``Offline``), a retained signed ``Announce`` with its capabilities and key, a signed ``Heartbeat``
every ``--heartbeat`` s and a ``Telemetry`` sample plus the public JSON telemetry document every
``--telemetry`` s (the agent defaults: 5 s and 5 s), the sample riding on the heartbeat paced by the
agent's own ``BeatTimer`` (or, with ``--telemetry-apart``, in a signed message of its own, as agents
before issue 21 sent it) — the heartbeat listing the results not yet
acknowledged, as a real agent's spool does — assignments verified (signature,
recipient, freshness, replay) by the real codec, and ``TasksStarted`` + ``TasksFinished`` reported
for every task. What it does not do is run anything: a task "runs" in no time — the coordinator's
side of the protocol is what is measured.

    python benchmarks/_fleet.py --url mqtt://127.0.0.1:PORT --home DIR --first 0 --count 250
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import sys
import time
from pathlib import Path

from dagon._keys import agent_keys
from dagon.agent._beat import BeatTimer
from dagon.protocol import (
    CONTENT_TYPE_JSON,
    AgentId,
    Announce,
    AssignTasks,
    Capabilities,
    Codec,
    Control,
    Heartbeat,
    KeyRing,
    Offline,
    ProtocolError,
    ResultsStored,
    ResultStatus,
    Signer,
    StartedTask,
    TaskRef,
    TaskResult,
    TasksFinished,
    TasksStarted,
    Telemetry,
    encode_public,
    raw_public_key,
    topics,
)
from dagon.protocol.transport import MqttTransport, Will

SLOTS = 2


class LightAgent:
    def __init__(
        self, url: str, name: str, signer: Signer, trust: KeyRing, *, heartbeat: float, telemetry: float, apart: bool
    ):
        self.id = AgentId(name)
        self.url = url
        self.codec = Codec(sender=f"agent/{name}", signer=signer, trust=trust, recipient=f"agent/{name}")
        self.key = raw_public_key(signer.public_key)
        self.session = os.urandom(8).hex()
        self.heartbeat = heartbeat
        self.telemetry = telemetry
        self.apart = apart  # the sample in a message of its own instead of on the heartbeat
        self.next_sample_at = time.monotonic()
        self.beats = BeatTimer(heartbeat, lambda: None if telemetry <= 0 or apart else self.next_sample_at)
        self.tasks = 0
        self.held: dict[TaskRef, None] = {}  # results reported, not yet acknowledged (as a real agent's spool)
        self.caps = Capabilities(
            hostname=f"{name}.fleet", host_id=f"host-{name}", arch=platform.machine(), os="linux", cpus=2,
            memory=4 << 30, runtimes=("process", "python"), labels={"fleet": "1"}, slots=SLOTS, version="fleet",
        )  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        lost = Offline(agent=self.id, reason="connection lost", session=self.session)
        will = Will(topics.agent_status(self.id), self.codec.encode(lost))
        async with MqttTransport(self.url, client_id=f"dagon-agent-{self.id}", will=will) as t:
            await t.subscribe(topics.agent_tasks(self.id), topics.agent_control(self.id))
            await self._announce(t)
            async with asyncio.TaskGroup() as tg:
                loops = [
                    tg.create_task(self._receive(t)),
                    tg.create_task(self._beat(t)),
                    tg.create_task(self._sample(t)),
                ]
                await stop.wait()
                for loop in loops:
                    loop.cancel()
            bye = Offline(agent=self.id, reason="shutdown", session=self.session)
            with contextlib.suppress(Exception, TimeoutError):  # the broker may be gone already
                async with asyncio.timeout(5):
                    await t.publish(topics.agent_status(self.id), self.codec.encode(bye), retain=True)

    async def _announce(self, t: MqttTransport, answer: str = "") -> None:
        announce = Announce(agent=self.id, capabilities=self.caps, key=self.key, session=self.session, answer=answer)
        await t.publish(topics.agent_status(self.id), self.codec.encode(announce), retain=True)

    async def _beat(self, t: MqttTransport) -> None:
        seq = 0
        while True:
            sample = await self.beats.wait()
            seq += 1
            held = tuple(self.held)
            beat = Heartbeat(
                agent=self.id, seq=seq, running=0, free_slots=SLOTS, held=held[:1000], complete=len(held) <= 1000,
                session=self.session, telemetry=sample,
            )  # fmt: skip
            await t.publish(topics.agent_telemetry(self.id), self.codec.encode(beat), qos=0)

    async def _sample(self, t: MqttTransport) -> None:
        if self.telemetry <= 0:
            return
        await asyncio.sleep(random.uniform(0, self.telemetry))
        while True:
            now = time.time()
            cpu = random.uniform(1, 30)
            doc = {
                "schema": "dagon.telemetry/1", "agent": self.id, "ts": now, "cpu_percent": cpu,
                "cpu_busy_cores": cpu / 50, "per_core_percent": [cpu, cpu], "load_avg": [0.2, 0.1, 0.1],
                "memory_used": 1 << 30, "memory_total": 4 << 30, "memory_percent": 25.0,
                "agent_cpu_percent": 0.2, "agent_rss": 40 << 20, "disk_used": 10 << 30, "disk_total": 32 << 30,
                "disk_read_bps": 0.0, "disk_write_bps": 4096.0, "net_recv_bps": 1200.0, "net_sent_bps": 900.0,
                "temperatures": {}, "power": {"watts": 4.2, "source": "model", "measured": False,
                                              "detail": {}, "energy_joules_total": 10.0},
            }  # fmt: skip
            await t.publish(
                topics.agent_telemetry_json(self.id), encode_public(doc), qos=0, content_type=CONTENT_TYPE_JSON
            )
            sample = Telemetry(
                agent=self.id, sampled_at=now, cpu_percent=cpu, memory_used=1 << 30, memory_total=4 << 30,
                per_core_percent=(cpu, cpu), load_avg=(0.2, 0.1, 0.1), power_watts=4.2, power_source="model",
            )  # fmt: skip
            if self.apart:
                await t.publish(topics.agent_telemetry(self.id), self.codec.encode(sample), qos=0)
            else:
                self.beats.ride(sample)
            self.next_sample_at = time.monotonic() + self.telemetry
            await asyncio.sleep(self.telemetry)

    async def _receive(self, t: MqttTransport) -> None:
        async for msg in t.messages():
            if msg.retain:
                continue
            try:
                message = self.codec.decode(msg.payload, limit=topics.payload_limit(msg.topic)).message
            except ProtocolError as exc:
                print(f"{self.id}: refused a message on {msg.topic}: {exc}", file=sys.stderr)
                continue
            if isinstance(message, ResultsStored):
                for ref in message.tasks:
                    self.held.pop(ref, None)
            elif isinstance(message, AssignTasks):
                for ref in message.stored:
                    self.held.pop(ref, None)
                now = time.time()
                started = tuple(StartedTask(a.run, a.task, a.attempt, now, "") for a in message.tasks)
                results = tuple(
                    TaskResult(a.run, a.task, a.attempt, ResultStatus.SUCCEEDED, 0, now, time.time())
                    for a in message.tasks
                )
                inbox = topics.coordinator_inbox(message.reply_to)
                await t.publish(inbox, self.codec.encode(TasksStarted(agent=self.id, tasks=started)))
                self.held.update(dict.fromkeys(TaskRef(r.run, r.task, r.attempt) for r in results))
                await t.publish(inbox, self.codec.encode(TasksFinished(agent=self.id, results=results)))
                self.tasks += len(results)
            elif isinstance(message, Control) and message.action == "announce":
                challenge = message.args.get("challenge", "")  # the coordinator's question: answered
                await self._announce(t, challenge if isinstance(challenge, str) else "")


async def watch_lag() -> None:
    """Say when this process's event loop was too busy to run its agents' timers (their heartbeats)."""
    while True:
        t0 = time.monotonic()
        await asyncio.sleep(0.5)
        late = time.monotonic() - t0 - 0.5
        if late > 2.0:
            print(
                f"{time.strftime('%H:%M:%S')} fleet process {os.getpid()}: event loop {late:.1f} s late",
                file=sys.stderr,
            )


async def main_async(args: argparse.Namespace) -> None:
    signer, trust = agent_keys(Path(args.home))
    timing = {"heartbeat": args.heartbeat, "telemetry": args.telemetry, "apart": args.telemetry_apart}
    agents = [
        LightAgent(args.url, f"fleet-{i:04d}", signer, trust, **timing)
        for i in range(args.first, args.first + args.count)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    lag = asyncio.create_task(watch_lag())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with asyncio.TaskGroup() as tg:
        for agent in agents:
            tg.create_task(agent.run(stop))
            await asyncio.sleep(0.005)  # a connection storm of 500 at once is not what is measured
    lag.cancel()
    print(json.dumps({a.id: a.tasks for a in agents}))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--home", required=True, help="the fleet's agent home (its key, the coordinator's key)")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=250)
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument("--telemetry", type=float, default=5.0)
    parser.add_argument("--telemetry-apart", action="store_true")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
