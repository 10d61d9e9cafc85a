"""Sensors and actuators on the device: sources, parsers, device discovery and the runtimes.

See :mod:`dagon.agent.sensors._runtime` for what a sensor task records and how it fails.
"""

from dagon.agent.sensors._devices import DEVICE_KINDS, check_device, find_devices, iio_devices
from dagon.agent.sensors._parsers import (
    BUILTIN_PARSERS,
    ParseError,
    Parser,
    parse_arduino,
    parse_json,
    parse_kv,
    resolve_parser,
)
from dagon.agent.sensors._readers import DeviceError, MqttFeed, SMBusLike, read_iio_channels, resolve_iio
from dagon.agent.sensors._runtime import READINGS_FILE, ActuatorRuntime, Publish, SensorRuntime
from dagon.agent.sensors._topic_feed import TopicFeed

__all__ = [
    "BUILTIN_PARSERS",
    "DEVICE_KINDS",
    "READINGS_FILE",
    "ActuatorRuntime",
    "DeviceError",
    "MqttFeed",
    "ParseError",
    "Parser",
    "Publish",
    "SMBusLike",
    "SensorRuntime",
    "TopicFeed",
    "check_device",
    "find_devices",
    "iio_devices",
    "parse_arduino",
    "parse_json",
    "parse_kv",
    "read_iio_channels",
    "resolve_iio",
    "resolve_parser",
]
