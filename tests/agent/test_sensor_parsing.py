"""Sensor source syntax, device strings, parsers and device discovery (no I/O beyond tmp trees)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagon.agent.sensors import ParseError, find_devices, parse_arduino, parse_json, parse_kv, resolve_parser
from dagon.protocol import ConfigError, parse_source

from ._devices import dht_line, iio_tree

ORIGINAL = "Humidity: 45.00 %  |  Temperature: 22.00 °C  71.60 °F  |  Heat Index: 21.80 °C"


def test_the_originals_arduino_line() -> None:
    assert parse_arduino(ORIGINAL) == {"humidity": 45.0, "temp_c": 22.0, "temp_f": 71.6, "heat_index_c": 21.8}
    assert parse_arduino(ORIGINAL + "\r") == parse_arduino(ORIGINAL)
    cold = parse_arduino(dht_line(-3.0, 80.0))
    assert cold is not None and cold["temp_c"] == -3.0
    # The sketch's other lines carry no reading: skipped, not zeros.
    assert parse_arduino("Starting DHT11 sensor reading...") is None
    assert parse_arduino("Error reading from DHT11 sensor") is None
    assert parse_arduino("") is None
    with pytest.raises(ParseError, match="not a DHT line"):
        parse_arduino("Humidity: 4#.00 %  |  Temp")  # a corrupted line (noise on the wire)
    with pytest.raises(ParseError, match="finite"):
        parse_arduino("Humidity: nan %  |  Temperature: 22.00 °C  71.60 °F")


def test_json_and_key_value_lines() -> None:
    assert parse_json('{"t": 21.5, "id": "a"}') == {"t": 21.5, "id": "a"}
    assert parse_json("3.5") == {"value": 3.5}
    assert parse_json("   ") is None
    with pytest.raises(ParseError, match="not JSON"):
        parse_json("{oops")
    assert parse_kv("t=21.5 h=40, id=probe;ok=yes") == {"t": 21.5, "h": 40.0, "id": "probe", "ok": "yes"}
    with pytest.raises(ParseError, match="is not key=value"):
        parse_kv("t=1 loose")


def test_resolving_parsers() -> None:
    assert resolve_parser("arduino") is parse_arduino
    assert resolve_parser("json:loads") is not None  # any importable callable
    with pytest.raises(ValueError, match="unknown parser 'csv'"):
        resolve_parser("csv")
    with pytest.raises(ValueError, match="cannot be loaded on this agent"):
        resolve_parser("no_such_module_x:parse")


@pytest.mark.parametrize(
    ("url", "device"),
    [
        ("serial:///dev/ttyACM0?baud=9600", "serial:/dev/ttyACM0"),
        ("serial:///dev/serial/by-id/usb-Arduino_Uno-if00", "serial:/dev/serial/by-id/usb-Arduino_Uno-if00"),
        ("iio:///sys/bus/iio/devices/iio:device0", "iio:/sys/bus/iio/devices/iio:device0"),
        ("iio://dht11?channels=in_temp_input", "iio:dht11"),
        ("i2c://1/0x76?register=0xf7&length=8", "i2c:1"),
        ("mqtt://sensors/+/dht", ""),
        ("mqtt://sensors/#", ""),
    ],
)
def test_sources_and_the_device_they_need(url: str, device: str) -> None:
    assert parse_source(url).device == device


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/dev/ttyACM0", "write it as scheme://"),
        ("usb:///dev/ttyACM0", "scheme 'usb' is not one of"),
        ("serial:///dev/ttyACM0?baud=9601", "not a standard rate"),
        ("serial:///dev/ttyACM0?speed=9600", "unknown option 'speed'"),
        ("serial://dev/ttyACM0", "must be absolute"),
        ("serial:///dev/../etc/passwd", "without '..'"),
        ("i2c://1/0x99", "outside the 7-bit range"),
        ("i2c://one/0x76", "i2c://BUS/ADDRESS"),
        ("i2c://1/0x76?length=64", "outside 1-32"),
        ("mqtt://dagon/wire/v1/agents/x/tasks", "dagon's own"),
        ("mqtt://$SYS/broker/uptime", "$-topics"),
        ("iio://bad name", "sysfs path"),
    ],
)
def test_bad_sources_say_what_to_write(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("$", r"\$")):
        parse_source(url)


def test_actuator_targets() -> None:
    assert parse_source("sysfs:///sys/class/leds/led0/brightness", actuator=True).device == ""
    with pytest.raises(ConfigError, match="under /sys/"):
        parse_source("sysfs:///etc/shadow", actuator=True)
    with pytest.raises(ConfigError, match="no \\+ or # wildcards"):
        parse_source("mqtt://relays/+", actuator=True)
    with pytest.raises(ConfigError, match="scheme 'sysfs'"):
        parse_source("sysfs:///sys/class/leds/led0/brightness")  # not a sensor source


def test_device_discovery_on_fixture_trees(tmp_path: Path) -> None:
    dev, sysfs = tmp_path / "dev", tmp_path / "sys"
    (dev / "serial" / "by-id").mkdir(parents=True)
    for name in ("ttyACM0", "ttyUSB1", "ttyS0", "i2c-1", "i2c-x", "serial0"):
        (dev / name).touch()
    (dev / "serial" / "by-id" / "usb-Arduino-if00").symlink_to(dev / "ttyACM0")
    iio = sysfs / "bus" / "iio" / "devices"
    iio_tree(iio, 0, "dht11@4", {"in_temp_input": "22000"})  # as the Raspberry Pi's dht11 overlay names it
    found = find_devices(dev=dev, sysfs=sysfs, extra=["serial:/dev/pts/7"])
    assert found == (
        f"serial:{dev}/ttyACM0", f"serial:{dev}/ttyUSB1", f"serial:{dev}/serial0",
        f"serial:{dev}/serial/by-id/usb-Arduino-if00",
        f"iio:{iio}/iio:device0", "iio:dht11@4", "iio:dht11", "i2c:1", "serial:/dev/pts/7",
    )  # fmt: skip
    assert not any("ttyS0" in d for d in found)  # every PC has it; it says nothing about sensors
    with pytest.raises(ConfigError, match="write serial:/dev/ttyACM0"):
        find_devices(dev=dev, sysfs=sysfs, extra=["ttyACM0"])


def test_configured_devices(tmp_path: Path) -> None:
    from dagon.agent import load_agent_config

    env = {"DAGON_HOME": str(tmp_path), "DAGON_AGENT_ID": "a"}
    config = load_agent_config(config_file=None, env={**env, "DAGON_DEVICES": "serial:/dev/pts/3, i2c:1"}, flags={})
    assert config.devices == ("serial:/dev/pts/3", "i2c:1") and config.detect_devices
    toml = tmp_path / "agent.toml"
    toml.write_text('devices = ["iio:dht11"]\ndetect_devices = false\n')
    config = load_agent_config(config_file=toml, env=env, flags={})
    assert config.devices == ("iio:dht11",) and not config.detect_devices
    with pytest.raises(ConfigError, match="write serial:/dev/ttyACM0"):
        load_agent_config(config_file=None, env=env, flags={"devices": "/dev/ttyACM0"})
