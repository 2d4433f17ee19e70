"""Monitor: pure helpers and the sampling coordinator with a fake psutil."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest

from node_engine.monitor import (
    Monitor,
    cpu_summary,
    disk_status,
    memory_status,
    network_rates,
    network_totals,
    parse_nvidia_smi,
    parse_throttled,
    psutil_temperatures,
)

VM = namedtuple("VM", "total available percent")
Swap = namedtuple("Swap", "percent")
Disk = namedtuple("Disk", "total free percent")
Net = namedtuple("Net", "bytes_recv bytes_sent")
Temp = namedtuple("Temp", "label current high critical")

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("throttled=0x0", dict(under_voltage=False, throttled=False, occurred_since_boot=False)),
        ("throttled=0x50005", dict(under_voltage=True, throttled=True, occurred_since_boot=True)),
        ("50000", dict(under_voltage=False, throttled=False, occurred_since_boot=True)),
        (0x2, dict(frequency_capped=True, throttled=False)),
        (0x8, dict(soft_temperature_limit=True)),
        (0x80000, dict(occurred_since_boot=True, soft_temperature_limit=False)),
        (
            "0xf",
            dict(
                under_voltage=True,
                frequency_capped=True,
                throttled=True,
                soft_temperature_limit=True,
                occurred_since_boot=False,
            ),
        ),
    ],
)
def test_parse_throttled_bits(raw, expected):
    result = parse_throttled(raw)
    for key, value in expected.items():
        assert getattr(result, key) is value, key


def test_parse_throttled_raw_and_garbage():
    assert parse_throttled("throttled=0x50005").raw == "0x50005"
    assert parse_throttled(None).raw is None
    assert parse_throttled("").throttled is False
    bad = parse_throttled("nonsense")
    assert bad.throttled is False and bad.raw == "nonsense"


def test_memory_disk_helpers():
    mem = memory_status(VM(4096 * MIB, 1024 * MIB, 75.0), Swap(12.5))
    assert (mem.total_mib, mem.available_mib, mem.used_percent, mem.swap_used_percent) == (
        4096,
        1024,
        75.0,
        12.5,
    )
    assert memory_status(VM(MIB, MIB, 101.0), None).used_percent == 100.0
    disk = disk_status(Disk(10 * 1024 * MIB, 2 * 1024 * MIB, 80.0))
    assert (disk.total_mib, disk.free_mib, disk.used_percent) == (10240, 2048, 80.0)


def test_network_rates_and_totals():
    assert network_rates(None, (1.0, 10, 10)).rx_bytes_per_s == 0
    rates = network_rates((10.0, 1000, 500), (12.0, 3000, 1500))
    assert rates.rx_bytes_per_s == 1000 and rates.tx_bytes_per_s == 500
    assert network_rates((10.0, 5000, 5000), (11.0, 100, 100)).rx_bytes_per_s == 0  # reset
    assert network_rates((10.0, 0, 0), (10.0, 5, 5)).tx_bytes_per_s == 0  # no time passed
    assert network_totals({"lo": Net(99, 99), "eth0": Net(10, 20), "wlan0": Net(1, 2)}) == (11, 22)


def test_cpu_summary():
    assert cpu_summary([]) == (0.0, [])
    assert cpu_summary([100.0, 50.0, 0.0, 10.0]) == (40.0, [100.0, 50.0, 0.0, 10.0])
    assert cpu_summary([120.0])[0] == 100.0


def test_psutil_temperatures_flattening():
    sensors = {
        "coretemp": [Temp("Package id 0", 55.0, 80, 100), Temp("Core 0", 50.04, 80, 100)],
        "cpu_thermal": [Temp("", 61.2, None, None)],
        "acpitz": [Temp("", 40.0, None, None), Temp("", 41.0, None, None)],
    }
    temps = psutil_temperatures(sensors)
    assert temps == {
        "coretemp_Package_id_0": 55.0,
        "coretemp_Core_0": 50.0,
        "cpu_thermal": 61.2,
        "acpitz": 40.0,
        "acpitz_1": 41.0,
    }


def test_parse_nvidia_smi_groups_models():
    out = "NVIDIA A2, 15356\nNVIDIA A2, 15356\nTesla T4, 15360\n\n"
    accs = parse_nvidia_smi(out)
    assert [(a.kind, a.model, a.memory_mib, a.count) for a in accs] == [
        ("nvidia-gpu", "NVIDIA A2", 15356, 2),
        ("nvidia-gpu", "Tesla T4", 15360, 1),
    ]
    assert parse_nvidia_smi("") == []


class FakePsutil:
    """Replaces the psutil module: counts calls, returns scripted values."""

    def __init__(self, temps: Any = None) -> None:
        self.calls: dict[str, int] = {}
        self.cpu = [[0.0, 0.0], [20.0, 40.0]]
        self.net = [
            {"lo": Net(0, 0), "eth0": Net(1000, 2000)},
            {"lo": Net(10**9, 10**9), "eth0": Net(3000, 3000)},
        ]
        self.temps = temps or {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def cpu_percent(self, percpu=False):
        self._count("cpu_percent")
        return self.cpu.pop(0) if len(self.cpu) > 1 else self.cpu[0]

    def getloadavg(self):
        return (0.5, 0.4, 0.3)

    def virtual_memory(self):
        return VM(1024 * MIB, 512 * MIB, 50.0)

    def swap_memory(self):
        return Swap(0.0)

    def disk_usage(self, path):
        return Disk(100 * MIB, 40 * MIB, 60.0)

    def net_io_counters(self, pernic=False):
        self._count("net")
        return self.net.pop(0) if len(self.net) > 1 else self.net[0]

    def sensors_temperatures(self):
        self._count("sensors")
        return self.temps


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self):
        return self.now


def _monitor(tmp_path: Path, psutil_mod, clock=None, **kwargs):
    if clock is None:
        clock = Clock()
        clock.now = 2.0
    defaults = dict(
        clock=clock,
        wall=lambda: 1000.0,
        which=lambda name: None,
        thermal_root=tmp_path / "thermal",
        throttled_sysfs=tmp_path / "get_throttled",
        jetson_release=tmp_path / "nv_tegra_release",
        device_tree_model=tmp_path / "model",
    )
    defaults.update(kwargs)
    return Monitor(psutil_mod, tmp_path, **defaults)


def test_monitor_sample_without_sensors_degrades_cleanly(tmp_path):
    ps = FakePsutil()
    clock = Clock()
    mon = _monitor(tmp_path, ps, clock=clock)
    mon.probe()
    clock.now = 2.0
    sample = mon.sample()
    assert sample.cpu_percent == 30.0 and sample.cpu_per_core == [20.0, 40.0]
    assert sample.load_1m == 0.5
    assert sample.memory.used_percent == 50.0 and sample.disk.free_mib == 40
    assert sample.network.rx_bytes_per_s == 1000.0  # (3000-1000)/2 s, loopback ignored
    assert sample.network.tx_bytes_per_s == 500.0
    assert sample.temperatures_c == {} and sample.max_temperature_c is None
    assert sample.throttling.throttled is False and sample.accelerators == []
    mon.sample()
    assert ps.calls["sensors"] == 1  # probed once, empty -> never asked again


def test_monitor_thermal_zones_and_sysfs_throttling(tmp_path):
    for i, (kind, milli) in enumerate([("cpu-thermal", "48312"), ("gpu-thermal", "51000")]):
        zone = tmp_path / "thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(milli + "\n")
    (tmp_path / "get_throttled").write_text("50005\n")
    mon = _monitor(tmp_path, FakePsutil())
    sample = mon.sample()
    assert sample.temperatures_c == {"cpu-thermal": 48.3, "gpu-thermal": 51.0}
    assert sample.max_temperature_c == 51.0
    assert sample.throttling.under_voltage and sample.throttling.throttled
    (tmp_path / "thermal" / "thermal_zone0" / "temp").write_text("70000")
    (tmp_path / "get_throttled").write_text("0")
    sample = mon.sample()
    assert sample.temperatures_c["cpu-thermal"] == 70.0
    assert not sample.throttling.throttled


def test_monitor_psutil_sensors_preferred(tmp_path):
    ps = FakePsutil(temps={"cpu_thermal": [Temp("", 66.6, None, None)]})
    sample = _monitor(tmp_path, ps).sample()
    assert sample.temperatures_c == {"cpu_thermal": 66.6}


def test_monitor_vcgencmd_is_rate_limited_and_accelerators_probed_once(tmp_path):
    runs: list[list[str]] = []

    def run(argv, timeout):
        runs.append(list(argv))
        if "get_throttled" in argv:
            return "throttled=0x4\n"
        return "Orin GPU, 8000\n"

    which = {"vcgencmd": "/usr/bin/vcgencmd", "nvidia-smi": "/usr/bin/nvidia-smi"}.get
    (tmp_path / "nv_tegra_release").write_text("# R35")
    (tmp_path / "model").write_text("NVIDIA Jetson Orin Nano\x00")
    clock = Clock()
    mon = _monitor(tmp_path, FakePsutil(), clock=clock, run=run, which=which, tool_interval_s=5.0)
    first = mon.sample()
    assert first.throttling.throttled
    for now in (1.0, 2.0, 4.9):  # within 5 s of the first run: cached
        clock.now = now
        mon.sample()
    clock.now = 5.0  # 5 s later: asks the tool again
    mon.sample()
    throttle_runs = [r for r in runs if "get_throttled" in r]
    smi_runs = [r for r in runs if "nvidia-smi" in r[0]]
    assert len(throttle_runs) == 2
    assert len(smi_runs) == 1
    kinds = [(a.kind, a.model) for a in first.accelerators]
    assert kinds == [("nvidia-gpu", "Orin GPU"), ("nvidia-jetson", "NVIDIA Jetson Orin Nano")]


def test_monitor_measures_the_engines_own_cpu(tmp_path):
    # own_cpu is the process's CPU seconds (os.times()); injected here with a clock
    used = [10.0]
    clock = Clock()
    mon = _monitor(tmp_path, FakePsutil(), clock=clock, own_cpu=lambda: used[0])
    mon.probe()  # primes the counter at t=0
    clock.now, used[0] = 2.0, 10.1  # 0.1 s of CPU over 2 s
    assert mon.sample().engine_cpu_percent == 5.0
    clock.now, used[0] = 3.0, 10.6
    assert mon.sample().engine_cpu_percent == 50.0
    assert mon.sample().engine_cpu_percent == 0.0  # no time passed: nothing to say
