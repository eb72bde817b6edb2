"""What the model manager counts: each model's spec and state, and each device's zones.

`DevicePool` holds one device's zones and the bytes placed in each, and reads how full the
device really is (NVML or torch on CUDA, the accounted bytes otherwise); `Entry` is one
registered model and where it is. Both are plain records: the manager changes them under its
lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from pipeline.device_profiles import MB, DeviceProfile
from pipeline.gpu_health import GpuHealth
from pipeline.model_manager.eviction import Priority


def module_bytes(module: nn.Module) -> int:
    """Bytes of every tensor in the module's state (parameters, buffers, packed int8 weights); a
    module whose weights live outside torch (a CTranslate2 model) gives them as `weights_bytes`."""
    total = int(getattr(module, "weights_bytes", 0))

    def add(value: Any) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, tuple | list):
            for item in value:
                add(item)

    for value in module.state_dict().values():
        add(value)
    return total


@dataclass(frozen=True)
class ModelSpec:
    """A model the manager may load: what builds it, how much it matters, where it goes."""

    name: str
    loader: Callable[[], nn.Module]  # builds it on the CPU from its weights file
    priority: Priority = "medium"
    zone: str | None = None  # None: the zone named like its priority (critical, high), else flexible
    cpu_fallback: bool = True  # may run on the CPU when no device has room

    def zone_in(self, pools: list[DevicePool]) -> str:
        if self.zone is not None:
            return self.zone
        named = self.priority if self.priority in ("critical", "high") else "flexible"
        return named if any(named in pool.zones for pool in pools) else "flexible"


@dataclass
class DevicePool:
    """One device's memory for models: zones with capacities, and what is placed in each."""

    key: str  # "cuda:0", "cpu", or any name for a simulated device
    device: torch.device  # where models placed here run
    zones: dict[str, int]  # zone → capacity, bytes
    total: int  # the device's memory, bytes (thresholds are shares of this)
    reserved: int = 0  # bytes taken before any model (context, framework, frame buffers)
    speed: float = 1.0
    warning: float = 0.75
    critical: float = 0.85
    fragmentation_limit: int = 512 * MB
    host: bool = False  # the machine's own memory (the cpu profile): nothing to fall back to from it
    used: dict[str, int] = field(default_factory=dict)  # zone → bytes placed (or reserved for a load)
    peak: int = 0  # the most bytes ever placed here at once (reserved included)
    zone_peaks: dict[str, int] = field(default_factory=dict)  # zone → the most bytes ever placed in it
    _health: GpuHealth | None = field(default=None, repr=False)  # NVML or torch readings, made on first use

    @classmethod
    def from_profile(cls, profile: DeviceProfile, device: torch.device, key: str | None = None) -> DevicePool:
        if key is None:
            simulated = profile.kind == "cuda" and device.type != "cuda"
            key = f"{profile.name} (simulated on {device})" if simulated else str(device)
        return cls(
            key=key,
            device=device,
            zones=profile.zone_bytes(),
            total=profile.memory_mb * MB,
            reserved=profile.reserved_mb * MB,
            speed=profile.speed,
            warning=profile.warning,
            critical=profile.critical,
            fragmentation_limit=profile.fragmentation_mb * MB,
            host=profile.kind == "cpu",  # a GPU's profile on a CPU device: a simulated card, accounted only
        )

    def free(self, zone: str) -> int:
        return self.zones.get(zone, 0) - self.used.get(zone, 0)

    @property
    def placed(self) -> int:
        return sum(self.used.values())

    @property
    def real(self) -> bool:
        """A CUDA device whose memory can be read (a simulated pool is accounted only)."""
        return self.device.type == "cuda" and self.key.startswith("cuda")

    def in_use(self) -> float:
        """Share of the device's memory in use: read from the driver on CUDA (NVML when present, as it
        counts every process; else `torch.cuda.mem_get_info`), accounted otherwise."""
        if self.real:
            if self._health is None:
                self._health = GpuHealth(self.device)
            reading = self._health.read()
            assert reading is not None  # a CUDA device always reads
            return reading.memory_used
        return (self.reserved + self.placed) / self.total

    def device_free(self) -> int | None:
        """Bytes the driver reports free on the device (None for a simulated, accounted-only pool)."""
        if not self.real:
            return None
        free, _ = torch.cuda.mem_get_info(self.device)
        return free

    def level(self) -> str:
        share = self.in_use()
        return "critical" if share >= self.critical else "warning" if share >= self.warning else "ok"

    def add(self, zone: str, nbytes: int) -> None:
        self.used[zone] = self.used.get(zone, 0) + nbytes
        self.peak = max(self.peak, self.reserved + self.placed)
        self.zone_peaks[zone] = max(self.zone_peaks.get(zone, 0), self.used[zone])

    def remove(self, zone: str, nbytes: int) -> None:
        self.used[zone] -= nbytes


@dataclass(eq=False)
class Entry:
    """One registered model and where it is."""

    spec: ModelSpec
    home: str = "flexible"  # the zone it goes to first
    module: nn.Module | None = None
    # device: placed in a pool; host: evicted, waiting in host memory; cpu: running on the CPU for want
    # of device room (a fallback); disk: only its weights file; loading: being built or moved, outside
    # the lock (its room is reserved in a zone once found)
    level: Literal["device", "host", "cpu", "disk", "loading"] = "disk"
    pool: DevicePool | None = None  # on the device level: where
    zone: str | None = None
    nbytes: int = 0  # measured after the first load (at its current precision)
    load_peak: int = 0  # the most bytes the load took on the device (CUDA), else nbytes
    load_s: float = 0.0  # measured: weights file → ready, the last load
    load_s_total: float = 0.0  # every load from the weights file, summed
    restore_s: float | None = None  # measured: host memory → device
    precision: str = "fp32"
    pending_precision: str | None = None  # asked for while in use: applied at the last release
    pins: int = 0  # frames in flight using it (and a request whose load is running)
    loading: bool = False  # a request is building or moving it outside the lock: others wait
    uses: int = 0
    last_use: float = 0.0
    value: float = 0.0  # eviction value (higher stays)
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    fallbacks: int = 0
    restores: int = 0
    loads: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def priority(self) -> Priority:
        return self.spec.priority
