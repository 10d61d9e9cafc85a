"""An ``mqtt://`` sensor source on a real Mosquitto: a real publisher (``mosquitto_pub``) plays the sensor,
a real agent records it, and the live readings reach a separate subscriber as documented JSON."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from _broker import missing
from _keys import agent_security

from dagon.agent import Agent
from dagon.agent.sensors import READINGS_FILE
from dagon.protocol import ResultStatus, decode_public, topics
from dagon.protocol.transport import MqttTransport

from ._support import COORD, FakeCoordinator, agent_config, assign

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "schemas" / "reading.json").read_text())
pytestmark = pytest.mark.mosquitto


def publish(url: str, topic: str, payload: str, *, retain: bool = False) -> None:
    binary = shutil.which("mosquitto_pub") or missing("mosquitto_pub not installed; run .ci/setup")
    port = url.rsplit(":", 1)[1]
    argv = [binary, "-h", "127.0.0.1", "-p", port, "-t", topic, "-m", payload, *(["-r"] if retain else [])]
    subprocess.run(argv, check=True, timeout=10)


async def test_a_sensor_publishing_to_the_broker(mosquitto: Any, tmp_path: Path, topic_prefix: str) -> None:
    sensor_topic = f"{topic_prefix}/greenhouse/dht"
    await asyncio.to_thread(publish, mosquitto.url, sensor_topic, '{"t": -99}', retain=True)  # stale: not recorded
    coord_link = MqttTransport(mosquitto.url, client_id=f"{topic_prefix}-coord")
    observer = MqttTransport(mosquitto.url, client_id=f"{topic_prefix}-observer")
    agent = Agent(
        config=agent_config(tmp_path),
        connect=lambda will: MqttTransport(mosquitto.url, client_id=f"{topic_prefix}-agent", will=will),
        **agent_security(),
    )
    async with coord_link, observer, agent:
        await coord_link.subscribe(topics.coordinator_inbox(COORD))
        await observer.subscribe(topics.run_task_readings("r1", "greenhouse"))
        coord = FakeCoordinator(coord_link)
        opts = {"duration": 60.0, "count": 4, "parse": "json"}
        await coord.assign(assign("greenhouse", f"mqtt://{topic_prefix}/+/dht", runtime="sensor", runtime_options=opts))

        async def sensor() -> None:  # publishes until the task has what it needs
            n = 0
            while True:
                n += 1
                await asyncio.to_thread(publish, mosquitto.url, sensor_topic, json.dumps({"t": 20 + n, "h": 40}))
                await asyncio.sleep(0.05)

        player = asyncio.create_task(sensor())
        try:
            result = (await coord.results(1, within=30))["greenhouse"]
        finally:
            player.cancel()
            await asyncio.gather(player, return_exceptions=True)
        assert result.status is ResultStatus.SUCCEEDED, result.error
        rows = [json.loads(x) for x in (Path(result.workdir) / READINGS_FILE).read_text().splitlines()]
        assert len(rows) == 4 and all(r["h"] == 40 and r["t"] > 20 for r in rows)  # the retained -99 is not one
        live = [decode_public((await anext(observer.messages())).payload) for _ in range(4)]
        for doc in live:
            jsonschema.validate(doc, SCHEMA)
        assert [d["reading"]["t"] for d in live] == [r["t"] for r in rows]
        assert not agent.rejections  # sensor payloads are not mistaken for (bad) dagon messages
        assert agent.sensors._open == {}  # unsubscribed once the task ended
