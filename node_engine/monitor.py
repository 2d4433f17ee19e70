"""Host monitoring: one coordinator does the sampling I/O, pure helpers compute.

In the style of Home Assistant's systemmonitor: `Monitor` owns every read (psutil,
sysfs, the occasional tool) and keeps the previous counters; the pure functions below
turn raw readings into the wire models (`MemoryStatus`, `Throttling`, ...). Tests pass
a fake psutil object and temporary sysfs roots.

Cheapness matters on a small device: things that cannot change (which accelerators
exist, which temperature and throttling sources exist) are probed once; each tick is a
handful of psutil calls and small sysfs reads, no subprocess (``vcgencmd`` is only used
when the sysfs file is missing, and then at most every `tool_interval_s`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.node import DiskStatus, MemoryStatus, NetworkStatus, Throttling
from schemas.resources import Accelerator

log = logging.getLogger(__name__)

MIB = 1024 * 1024
RPI_THROTTLED_SYSFS = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
THERMAL_ROOT = Path("/sys/class/thermal")
JETSON_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")

RunCommand = Callable[[Sequence[str], float], str]


def own_cpu_seconds() -> float:
    """CPU seconds (user + system, all threads) this process has used: ``os.times()``,
    no file read."""
    t = os.times()
    return t.user + t.system


def run_command(argv: Sequence[str], timeout: float) -> str:
    """Run a small tool and return its stdout ('' on any failure)."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


# ---------------------------------------------------------------- pure helpers


def parse_throttled(raw: str | int | None) -> Throttling:
    """Decode a Raspberry Pi ``get_throttled`` value (``throttled=0x50005``, ``50005``, int).

    Bits: 0 under-voltage, 1 ARM frequency capped, 2 currently throttled, 3 soft
    temperature limit active; 16-19: the same conditions occurred since boot.
    """
    if raw is None:
        return Throttling()
    if isinstance(raw, int):
        value = raw
    else:
        text = raw.strip()
        if "=" in text:
            text = text.split("=", 1)[1].strip()
        if not text:
            return Throttling()
        try:
            value = int(text, 16)
        except ValueError:
            return Throttling(raw=text[:128])
    return Throttling(
        under_voltage=bool(value & 0x1),
        frequency_capped=bool(value & 0x2),
        throttled=bool(value & 0x4),
        soft_temperature_limit=bool(value & 0x8),
        occurred_since_boot=bool(value & 0xF0000),
        raw=hex(value),
    )


def _clamp_percent(value: float) -> float:
    return min(100.0, max(0.0, float(value)))


def memory_status(virtual: Any, swap: Any | None) -> MemoryStatus:
    """Memory (and swap) from psutil's ``virtual_memory()`` / ``swap_memory()`` tuples."""
    return MemoryStatus(
        total_mib=int(virtual.total // MIB),
        available_mib=int(virtual.available // MIB),
        used_percent=_clamp_percent(virtual.percent),
        swap_used_percent=_clamp_percent(swap.percent) if swap is not None else 0.0,
    )


def disk_status(usage: Any) -> DiskStatus:
    """The state directory's file system from psutil's ``disk_usage()`` tuple."""
    return DiskStatus(
        total_mib=int(usage.total // MIB),
        free_mib=int(usage.free // MIB),
        used_percent=_clamp_percent(usage.percent),
    )


def network_rates(
    previous: tuple[float, int, int] | None, current: tuple[float, int, int]
) -> NetworkStatus:
    """Bytes/s received and sent between two (time, rx_bytes, tx_bytes) readings.

    A counter that went backwards (interface reset, wrap) counts as no traffic.
    """
    if previous is None:
        return NetworkStatus()
    dt = current[0] - previous[0]
    if dt <= 0:
        return NetworkStatus()
    rx = max(0, current[1] - previous[1]) / dt
    tx = max(0, current[2] - previous[2]) / dt
    return NetworkStatus(rx_bytes_per_s=rx, tx_bytes_per_s=tx)


def network_totals(per_nic: Mapping[str, Any]) -> tuple[int, int]:
    """Received and sent bytes summed over interfaces, loopback excluded."""
    rx = tx = 0
    for name, counters in per_nic.items():
        if name == "lo" or name.startswith("lo:"):
            continue
        rx += int(counters.bytes_recv)
        tx += int(counters.bytes_sent)
    return rx, tx


def cpu_summary(per_core: Sequence[float]) -> tuple[float, list[float]]:
    """Total CPU percent (mean over cores) and the per-core list, clamped to 0-100."""
    cores = [round(_clamp_percent(v), 1) for v in per_core]
    total = round(sum(cores) / len(cores), 1) if cores else 0.0
    return total, cores


def psutil_temperatures(sensors: Mapping[str, Sequence[Any]]) -> dict[str, float]:
    """Flatten ``psutil.sensors_temperatures()`` into ``{chip[_label]: celsius}``."""
    out: dict[str, float] = {}
    for chip, entries in sensors.items():
        for i, entry in enumerate(entries):
            current = getattr(entry, "current", None)
            if current is None:
                continue
            label = getattr(entry, "label", "") or ""
            key = f"{chip}_{label}" if label else (chip if i == 0 else f"{chip}_{i}")
            key = key.replace(" ", "_")[:128]
            if key in out:
                key = f"{key}_{i}"[:128]
            out[key] = round(float(current), 1)
            if len(out) >= 64:
                return out
    return out


def max_temperature(temperatures: Mapping[str, float]) -> float | None:
    """The hottest reading, or None when there is none."""
    return max(temperatures.values()) if temperatures else None


def parse_nvidia_smi(output: str) -> list[Accelerator]:
    """``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`` -> list.

    GPUs of the same model are grouped into one entry with a count.
    """
    groups: dict[tuple[str, int], int] = {}
    for line in output.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if not parts or not parts[0]:
            continue
        try:
            memory = int(float(parts[1])) if len(parts) > 1 else 0
        except ValueError:
            memory = 0
        key = (parts[0][:128], memory)
        groups[key] = groups.get(key, 0) + 1
    return [
        Accelerator(kind="nvidia-gpu", model=model, memory_mib=memory, count=min(count, 64))
        for (model, memory), count in groups.items()
    ][:16]


# ---------------------------------------------------------------- the coordinator


@dataclass(frozen=True)
class Sample:
    """One reading of the host, ready to go into a `NodeStatus`."""

    ts: float
    cpu_percent: float
    cpu_per_core: list[float]
    load_1m: float
    memory: MemoryStatus
    disk: DiskStatus
    network: NetworkStatus
    temperatures_c: dict[str, float] = field(default_factory=dict)
    max_temperature_c: float | None = None
    throttling: Throttling = field(default_factory=Throttling)
    accelerators: list[Accelerator] = field(default_factory=list)
    engine_cpu_percent: float = 0.0
    """The engine process's own CPU since the previous sample, % of one core (its tasks
    are other processes: see `TaskStatus.cpu_percent`); the shedder splits host CPU into
    what the engine owns and what it does not."""


class Monitor:
    """Samples the host; the only object in the engine that reads host metrics."""

    def __init__(
        self,
        psutil_mod: Any,
        disk_path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        run: RunCommand = run_command,
        which: Callable[[str], str | None] = shutil.which,
        thermal_root: Path = THERMAL_ROOT,
        throttled_sysfs: Path = RPI_THROTTLED_SYSFS,
        jetson_release: Path = JETSON_RELEASE,
        device_tree_model: Path = DEVICE_TREE_MODEL,
        tool_interval_s: float = 10.0,
        own_cpu: Callable[[], float] = own_cpu_seconds,
    ) -> None:
        self._ps = psutil_mod
        self._own_cpu = own_cpu
        self._own_prev: tuple[float, float] | None = None
        self._disk_path = str(disk_path)
        self._clock = clock
        self._wall = wall
        self._run = run
        self._which = which
        self._thermal_root = thermal_root
        self._throttled_sysfs = throttled_sysfs
        self._jetson_release = jetson_release
        self._device_tree_model = device_tree_model
        self._tool_interval_s = tool_interval_s
        self._net_prev: tuple[float, int, int] | None = None
        self._probed = False
        self._temp_source: str | None = None
        self._thermal_zones: list[tuple[str, Path]] = []
        self._throttle_source: str | None = None
        self._vcgencmd: str | None = None
        self._throttle_cache: tuple[float, Throttling] | None = None
        self._accelerators: list[Accelerator] = []

    # ----- probing (once) -----

    def probe(self) -> None:
        """Find out once which sources exist on this host (temperatures, throttling, GPUs)."""
        if self._probed:
            return
        self._probed = True
        self._probe_temperatures()
        self._probe_throttling()
        self._accelerators = self._probe_accelerators()
        # prime the CPU and network counters so the first sample has deltas
        try:
            self._ps.cpu_percent(percpu=True)
        except Exception:  # pragma: no cover - psutil on odd platforms
            log.debug("cpu_percent unavailable", exc_info=True)
        self._net_prev = self._read_network()
        self._own_prev = (self._clock(), self._own_cpu())
        log.info(
            "monitor: temperatures=%s throttling=%s accelerators=%s",
            self._temp_source or "none",
            self._throttle_source or "none",
            [a.kind for a in self._accelerators] or "none",
        )

    def _probe_temperatures(self) -> None:
        sensors = getattr(self._ps, "sensors_temperatures", None)
        if sensors is not None:
            try:
                if psutil_temperatures(sensors()):
                    self._temp_source = "psutil"
                    return
            except Exception:
                log.debug("sensors_temperatures failed", exc_info=True)
        zones: list[tuple[str, Path]] = []
        try:
            entries = sorted(self._thermal_root.glob("thermal_zone*"))
        except OSError:
            entries = []
        for zone in entries:
            temp = zone / "temp"
            if not temp.is_file():
                continue
            try:
                kind = (zone / "type").read_text().strip() or zone.name
            except OSError:
                kind = zone.name
            name = kind if kind not in {n for n, _ in zones} else f"{kind}_{zone.name}"
            zones.append((name[:128], temp))
        if zones:
            self._thermal_zones = zones[:64]
            self._temp_source = "thermal"

    def _probe_throttling(self) -> None:
        if self._throttled_sysfs.is_file():
            self._throttle_source = "sysfs"
            return
        vcgencmd = self._which("vcgencmd")
        if vcgencmd:
            self._vcgencmd = vcgencmd
            self._throttle_source = "vcgencmd"

    def _probe_accelerators(self) -> list[Accelerator]:
        found: list[Accelerator] = []
        smi = self._which("nvidia-smi")
        if smi:
            output = self._run(
                [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"], 5.0
            )
            found.extend(parse_nvidia_smi(output))
        if self._jetson_release.is_file():
            try:
                model = self._device_tree_model.read_text().strip("\x00 \n")[:128]
            except OSError:
                model = "jetson"
            found.append(Accelerator(kind="nvidia-jetson", model=model or "jetson"))
        return found[:16]

    @property
    def accelerators(self) -> list[Accelerator]:
        """Accelerators found on this host (probed once)."""
        self.probe()
        return list(self._accelerators)

    # ----- per-tick reads -----

    def _read_network(self) -> tuple[float, int, int] | None:
        try:
            per_nic = self._ps.net_io_counters(pernic=True)
        except Exception:
            return None
        if not per_nic:
            return None
        return (self._clock(), *network_totals(per_nic))

    def _read_temperatures(self) -> dict[str, float]:
        if self._temp_source == "psutil":
            try:
                return psutil_temperatures(self._ps.sensors_temperatures())
            except Exception:
                return {}
        if self._temp_source == "thermal":
            out: dict[str, float] = {}
            for name, path in self._thermal_zones:
                try:
                    out[name] = round(int(path.read_text().strip()) / 1000.0, 1)
                except (OSError, ValueError):
                    continue
            return out
        return {}

    def _read_throttling(self) -> Throttling:
        if self._throttle_source == "sysfs":
            try:
                return parse_throttled(self._throttled_sysfs.read_text())
            except OSError:
                return Throttling()
        if self._throttle_source == "vcgencmd" and self._vcgencmd:
            now = self._clock()
            if self._throttle_cache and now - self._throttle_cache[0] < self._tool_interval_s:
                return self._throttle_cache[1]
            value = parse_throttled(self._run([self._vcgencmd, "get_throttled"], 2.0) or None)
            self._throttle_cache = (now, value)
            return value
        return Throttling()

    def _engine_cpu(self) -> float:
        """The engine's own CPU since the previous sample, % of one core."""
        now, used = self._clock(), self._own_cpu()
        prev, self._own_prev = self._own_prev, (now, used)
        if prev is None or now <= prev[0]:
            return 0.0
        return max(0.0, (used - prev[1]) / (now - prev[0]) * 100.0)

    def sample(self) -> Sample:
        """Read the host once; cheap enough to call every second."""
        self.probe()
        ps = self._ps
        total, per_core = cpu_summary(ps.cpu_percent(percpu=True))
        engine_cpu = self._engine_cpu()
        try:
            load = float(ps.getloadavg()[0])
        except (AttributeError, OSError):
            load = 0.0
        try:
            swap = ps.swap_memory()
        except Exception:
            swap = None
        memory = memory_status(ps.virtual_memory(), swap)
        try:
            disk = disk_status(ps.disk_usage(self._disk_path))
        except OSError:
            disk = DiskStatus(total_mib=0, free_mib=0, used_percent=0.0)
        current = self._read_network()
        network = network_rates(self._net_prev, current) if current else NetworkStatus()
        if current:
            self._net_prev = current
        temperatures = self._read_temperatures()
        return Sample(
            ts=self._wall(),
            cpu_percent=total,
            cpu_per_core=per_core,
            load_1m=max(0.0, load),
            memory=memory,
            disk=disk,
            network=network,
            temperatures_c=temperatures,
            max_temperature_c=max_temperature(temperatures),
            throttling=self._read_throttling(),
            accelerators=list(self._accelerators),
            engine_cpu_percent=round(engine_cpu, 2),
        )


def host_cpu_count(psutil_mod: Any) -> int:
    """Logical CPUs (at least 1)."""
    return int(psutil_mod.cpu_count(logical=True) or os.cpu_count() or 1)
