"""Power-source parsers on fixture sysfs trees and recorded outputs, and energy attribution."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dagon.agent.power import (
    CpuModelSource,
    EnergyLedger,
    HwmonSource,
    MqttMeterSource,
    PmicSource,
    RaplSource,
    detect_power_source,
    find_hwmon,
    find_rapl_zones,
    parse_meter_payload,
    parse_pmic_adc,
    parse_prometheus_vector,
)
from dagon.protocol import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def _rapl_tree(root: Path, energy0: int, energy1: int, max_range: int = 262143328850) -> Path:
    powercap = root / "class" / "powercap"
    _write(
        powercap,
        {
            "intel-rapl:0/name": "package-0",
            "intel-rapl:0/energy_uj": str(energy0),
            "intel-rapl:0/max_energy_range_uj": str(max_range),
            "intel-rapl:0/intel-rapl:0:0/name": "core",  # a subzone: part of package-0
            "intel-rapl:0/intel-rapl:0:0/energy_uj": "5",
            "intel-rapl:1/name": "psys",
            "intel-rapl:1/energy_uj": str(energy1),
            "intel-rapl:1/max_energy_range_uj": str(max_range),
        },
    )
    (powercap / "intel-rapl:0:0").symlink_to(powercap / "intel-rapl:0" / "intel-rapl:0:0")
    return powercap


def test_rapl_power_from_counter_deltas_and_wraparound(tmp_path: Path) -> None:
    max_range = 262143328850
    powercap = _rapl_tree(tmp_path, max_range - 1_000_000, 10_000_000)
    zones = find_rapl_zones(powercap)
    assert [name for name, _ in zones] == ["package-0", "psys"]
    source = RaplSource(zones)
    assert source.sample(100.0) is None  # the first reading only primes the counters
    # package-0 wraps: 1 J before the wrap + 3 J after (+1 µJ for the counter's 0); psys +20 J; over 2 s.
    (powercap / "intel-rapl:0" / "energy_uj").write_text("2999999\n")
    (powercap / "intel-rapl:1" / "energy_uj").write_text("30000000\n")
    reading = source.sample(102.0)
    assert reading is not None
    assert reading.measured and reading.source == "rapl"
    assert reading.detail["package-0"] == pytest.approx(2.0, rel=1e-6)
    assert reading.detail["psys"] == pytest.approx(10.0)
    assert reading.watts == pytest.approx(12.0, rel=1e-6)


def test_hwmon_power_energy_and_ina2xx(tmp_path: Path) -> None:
    hwmon = tmp_path / "class" / "hwmon"
    _write(
        hwmon,
        {
            "hwmon0/name": "coretemp",
            "hwmon0/temp1_input": "45000",
            "hwmon1/name": "amdgpu",
            "hwmon1/power1_average": "12500000",  # µW
            "hwmon2/name": "ina226",
            "hwmon2/in1_input": "5120",  # mV
            "hwmon2/curr1_input": "850",  # mA
            "hwmon3/name": "acpi_power_meter",
            "hwmon3/energy1_input": "1000000",  # µJ
        },
    )
    devices = find_hwmon(hwmon)
    assert [d.name for d in devices] == ["hwmon1", "hwmon2", "hwmon3"]
    source = HwmonSource(devices)
    first = source.sample(10.0)
    assert first is not None
    assert first.detail == pytest.approx({"hwmon1:amdgpu": 12.5, "hwmon2:ina226": 5.12 * 0.85})
    (hwmon / "hwmon3" / "energy1_input").write_text("7000000\n")  # +6 J in 2 s
    second = source.sample(12.0)
    assert second is not None
    assert second.detail["hwmon3:acpi_power_meter"] == pytest.approx(3.0)
    assert second.watts == pytest.approx(12.5 + 4.352 + 3.0)


def test_ina226_alone_is_labelled_ina2xx(tmp_path: Path) -> None:
    hwmon = tmp_path / "hwmon"
    _write(hwmon, {"hwmon4/name": "ina219", "hwmon4/power1_input": "2400000"})
    reading = HwmonSource(find_hwmon(hwmon)).sample(1.0)
    assert reading is not None
    assert (reading.source, reading.measured) == ("ina2xx", True)
    assert reading.watts == pytest.approx(2.4)


def test_pmic_parser_on_recorded_pi5_output() -> None:
    rails = parse_pmic_adc((FIXTURES / "pmic_read_adc.txt").read_text())
    assert len(rails) == 12  # EXT5V_V and BATT_V have no current channel
    assert rails["3V7_WL_SW"] == pytest.approx(3.71020300 * 0.00390372)
    assert rails["VDD_CORE"] == pytest.approx(0.88363000 * 0.72172600)
    assert sum(rails.values()) == pytest.approx(1.71, abs=0.05)
    assert parse_pmic_adc('error=1 error_msg="Command not registered"\n') == {}


async def test_pmic_source_runs_the_command(tmp_path: Path) -> None:
    script = tmp_path / "vcgencmd"
    script.write_text(f'#!/bin/sh\n[ "$1" = pmic_read_adc ] || exit 1\ncat {FIXTURES / "pmic_read_adc.txt"}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    reading = await PmicSource(str(script)).read(5.0, cpu_util=0.0)
    assert reading is not None
    assert reading.measured and reading.source == "pmic" and len(reading.detail) == 12
    assert reading.watts == pytest.approx(sum(parse_pmic_adc((FIXTURES / "pmic_read_adc.txt").read_text()).values()))


async def test_mqtt_meter_payloads() -> None:
    assert parse_meter_payload((FIXTURES / "tasmota_sensor.json").read_bytes()) == 23.0
    assert parse_meter_payload((FIXTURES / "shelly_switch0.json").read_bytes()) == 17.4
    assert parse_meter_payload(b"42.5") == 42.5  # Shelly Gen1 relay/0/power
    assert parse_meter_payload(b'{"ENERGY":{"Power":[10,5]}}') == 15.0
    assert parse_meter_payload(b'{"Time":"x"}') is None
    assert parse_meter_payload(b"not json") is None
    meter = MqttMeterSource("plugs/pi/SENSOR", max_age=60)
    assert await meter.read(0.0, cpu_util=0.5) is None
    assert meter.feed((FIXTURES / "tasmota_sensor.json").read_bytes(), 100.0)
    reading = await meter.read(130.0, cpu_util=0.5)
    assert reading is not None and reading.watts == 23.0 and reading.measured
    assert await meter.read(161.0, cpu_util=0.5) is None  # stale


def test_prometheus_answers() -> None:
    assert parse_prometheus_vector((FIXTURES / "prometheus_vector.json").read_bytes()) == pytest.approx(49.75)
    assert parse_prometheus_vector(b'{"status":"success","data":{"resultType":"vector","result":[]}}') is None
    assert parse_prometheus_vector(b'{"status":"error","errorType":"bad_data","error":"parse error"}') is None
    assert parse_prometheus_vector(b'{"status":"success","data":{"resultType":"scalar","result":[1,"3"]}}') == 3.0


async def test_cpu_model_is_marked_modelled() -> None:
    model = CpuModelSource(idle_watts=3.0, max_watts=7.0)
    reading = await model.read(1.0, cpu_util=0.25)
    assert reading is not None
    assert (reading.watts, reading.measured, reading.source) == (4.0, False, "model")
    with pytest.raises(ValueError, match="power_idle_watts"):
        CpuModelSource(idle_watts=9, max_watts=2)


def test_detection_order_and_errors(tmp_path: Path) -> None:
    _rapl_tree(tmp_path, 1, 1)
    assert isinstance(detect_power_source("auto", sysfs=tmp_path), (PmicSource, RaplSource))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert isinstance(detect_power_source("auto", sysfs=empty), (PmicSource, CpuModelSource))
    assert detect_power_source("off") is None
    assert isinstance(detect_power_source("auto", sysfs=empty, mqtt_topic="plug/SENSOR"), MqttMeterSource)
    with pytest.raises(ConfigError, match="power_source 'rapl' is not available"):
        detect_power_source("rapl", sysfs=empty)
    with pytest.raises(ConfigError, match="power_prometheus_query"):
        detect_power_source("prometheus", prometheus_url="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="must be one of"):
        detect_power_source("solar")


def _profile(t: float) -> float:
    return 10.0 if t < 10 else 20.0


def test_energy_attribution_against_a_known_profile() -> None:
    # Synthetic node: 10 W for t in [0, 10), 20 W in [10, 20), sampled every 0.5 s.
    # Task A runs [0, 20] on one full core; task B runs [10, 20] on one full core.
    # Busy cores: 1 then 2. Expected: A = 10*10 + 20*10/2 = 200 J, B = 20*10/2 = 100 J.
    ledger = EnergyLedger()
    t = 0.0
    ledger.add(0.0, 10.0, busy_cores=1.0, running=1, measured=True, source="synthetic")
    while t < 20.0:
        t += 0.5
        mid = t - 0.25
        busy = 1.0 if mid < 10 else 2.0
        ledger.add(t, _profile(mid), busy_cores=busy, running=1 if mid < 10 else 2, measured=True, source="synthetic")
    a = ledger.attribute(0.0, 20.0, cpu_time=20.0)
    b = ledger.attribute(10.0, 20.0, cpu_time=10.0)
    assert a is not None and b is not None
    assert a.joules == pytest.approx(200.0, rel=0.05)
    assert b.joules == pytest.approx(100.0, rel=0.05)
    assert b.watts == pytest.approx(10.0, rel=0.05)
    assert a.measured and a.source == "synthetic"
    assert a.joules + b.joules <= ledger.total_joules + 1e-6


def test_energy_attribution_uneven_shares_idle_split_and_extrapolation() -> None:
    ledger = EnergyLedger()
    for i in range(11):  # 8 W constant, 1.5 cores busy by a 1-core and a 0.5-core task over [0, 10]
        ledger.add(float(i), 8.0, busy_cores=1.5, running=2, measured=False, source="model")
    big = ledger.attribute(0.0, 10.0, cpu_time=10.0)
    small = ledger.attribute(0.0, 10.0, cpu_time=5.0)
    assert big is not None and small is not None
    assert big.joules == pytest.approx(80 * 2 / 3, rel=0.05)
    assert small.joules == pytest.approx(80 / 3, rel=0.05)
    assert not big.measured
    idle = EnergyLedger()
    for i in range(5):  # nothing busy: two sleeping tasks share the power evenly
        idle.add(float(i), 4.0, busy_cores=0.0, running=2, measured=True, source="rapl")
    sleeper = idle.attribute(0.0, 4.0, cpu_time=0.0)
    assert sleeper is not None and sleeper.joules == pytest.approx(8.0)
    late = idle.attribute(3.0, 6.0, cpu_time=0.0)  # runs past the newest sample: extrapolated
    assert late is not None and late.joules == pytest.approx(6.0)
    assert EnergyLedger().attribute(0.0, 1.0, cpu_time=1.0) is None
