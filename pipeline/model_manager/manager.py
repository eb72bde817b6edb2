"""The model manager: which models are in device memory, which wait in host memory, which on disk.

Several models share one device. Each is registered with a loader (which builds it from its
weights file: the disk level), a priority and a zone. `acquire(name)` returns the model on the
device it was placed on, loading or restoring it first, and pins it until `release(name)`; a
pinned model (in use by a frame in flight) is never evicted.

Placement, in order: the model's zone on the device with the most free room (weighted by the
device's speed); the `flexible` zone; evicting lower-valued models from those zones; host memory
on the CPU if the model may fall back there; else `ModelMemoryError`, naming the model, the
bytes it needs and the bytes free.

Eviction value (greedy-dual-size-frequency, with priority): a model's value is
`inflation + weight(priority) × uses × reload cost / size`, where the reload cost is what
bringing it back would take from the level it would drop to (host memory or disk, measured),
and `inflation` rises to the value of each model evicted, so models not used for a while age
out (recency) while often-used, costly, small, important models stay. `critical` models are
never evicted. `high` ones are evicted only under pressure: when their device is past its
warning threshold, or for a `critical` model that nothing else can make room for. When room
must be made by evicting, the slower device gives it up first, so the faster one keeps its
models; a model placed without evicting goes where free room × speed is largest.

An evicted model moves down a level: to (pinned) host memory when the host budget has room, else
back to its weights file; it comes back from the fastest level that still holds it.

Thresholds act on real readings where there are some (NVML, else `torch.cuda.mem_get_info`, on
CUDA) and on the accounted bytes against the profile's budget otherwise: past `warning`, nothing
is preloaded; past `critical`, low-priority models are unloaded, largest first, until back under
`warning`. On CUDA a model is placed only where the driver reports free memory for its load peak
(other processes share the card), and an out-of-memory error while placing evicts and tries
once more, then falls back to the CPU (or fails with `ModelMemoryError`), never crashing a run.

All methods are thread-safe. The lock guards bookkeeping only: building a model from its
file and copying it to its device run outside it (room is reserved first, then committed),
so a slow load never stalls `status()` or other models' requests; a second request for a
model being loaded waits for that load.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from pipeline.device_profiles import MB, DeviceProfile
from pipeline.errors import PipelineError
from pipeline.gpu_health import GpuHealth
from pipeline.model_manager.batching import Batcher

log = logging.getLogger(__name__)

Priority = Literal["low", "medium", "high", "critical"]
PRIORITY_WEIGHT = {"low": 1.0, "medium": 2.0, "high": 4.0, "critical": 8.0}
HOST_BANDWIDTH = 8e9  # bytes/s host → device, the estimate before a restore has been timed
Policy = Literal["score", "lru"]


class ModelMemoryError(PipelineError):
    """A model that fits nowhere: not on any device, not on the CPU (or not allowed there)."""


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


class ModelManager:
    """Loads, places, evicts and unloads models; see the module docstring."""

    def __init__(
        self,
        pools: list[DevicePool],
        *,
        host_budget: int = 0,
        policy: Policy = "score",
        idle_unload_s: float = 900.0,
        preload: bool = True,
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.perf_counter,
    ):
        if not pools:
            raise ValueError("the model manager needs at least one device pool")
        self.pools = pools
        self.host_budget = host_budget
        self.host_peak = 0  # the most bytes ever waiting in host memory at once
        self.policy = policy
        self.idle_unload_s = idle_unload_s
        self.preload_enabled = preload
        self.clock = clock  # recency and idle time
        self.timer = timer  # load and restore times (the reload costs in the value)
        self.entries: dict[str, Entry] = {}
        self.copies = 0  # uses of a model on another device than the frame's (an input copy each)
        self.cache_releases = 0
        self.fragmentation = 0  # bytes reserved but not allocated, at the last check
        self._inflation = 0.0
        self._lock = threading.RLock()
        self._settled = threading.Condition(self._lock)  # a load ended: requests waiting for it look again
        self._next: dict[str, Counter[str]] = defaultdict(Counter)  # model → models used right after it
        self._last_used: str | None = None
        self.events: list[str] = []
        self._batchers: dict[str, Batcher] = {}
        self._watchers: list[object] = []  # the runs' watch tasks; the first does the rounds

    @property
    def host_used(self) -> int:
        """Bytes of evicted models waiting in host memory."""
        return sum(e.nbytes for e in self.entries.values() if e.level == "host")

    @property
    def fallback_used(self) -> int:
        """Bytes of models running on the CPU for want of device room."""
        return sum(e.nbytes for e in self.entries.values() if e.level == "cpu")

    @classmethod
    def from_profile(cls, profile: DeviceProfile, device: torch.device, **options: Any) -> ModelManager:
        options.setdefault("idle_unload_s", profile.idle_unload_s)
        options.setdefault("preload", profile.preload)
        pool = DevicePool.from_profile(profile, device)
        return cls([pool], host_budget=profile.host_mb * MB if profile.kind == "cuda" else 0, **options)

    @classmethod
    def for_device(cls, device: torch.device, profile: DeviceProfile | None = None, **options: Any) -> ModelManager:
        """A manager for `device` with its profile (detected when not given).

        On a machine with several GPUs every one of them gets a pool (the run's device first,
        with `profile`; the others with their own detected profiles), each weighted by its
        streaming-multiprocessor count, so models spread to where there is room and speed, and
        a model placed off the frames' device costs a counted copy of its input.
        """
        from pipeline.device_profiles import detect_profile

        manager = cls.from_profile(profile or detect_profile(device), device, **options)
        if device.type == "cuda" and torch.cuda.device_count() > 1:
            index = device.index if device.index is not None else torch.cuda.current_device()
            others = [torch.device("cuda", i) for i in range(torch.cuda.device_count()) if i != index]
            for other in others:
                manager.pools.append(DevicePool.from_profile(detect_profile(other), other))
            counts = [torch.cuda.get_device_properties(pool.device).multi_processor_count for pool in manager.pools]
            for pool, sms in zip(manager.pools, counts, strict=True):
                pool.speed = sms / max(counts)
        return manager

    # ----------------------------------------------------------------- registry

    def register(self, spec: ModelSpec) -> None:
        with self._lock:
            if spec.name in self.entries:
                raise ValueError(f"model {spec.name!r} is registered already")
            zone = spec.zone_in(self.pools)
            if not any(zone in pool.zones for pool in self.pools):
                raise ValueError(f"model {spec.name!r}: no device has a zone {zone!r}")
            self.entries[spec.name] = Entry(spec, home=zone)

    def ensure(self, spec: ModelSpec) -> None:
        """Register `spec` unless a model of that name is registered (sessions share models)."""
        with self._lock:
            if spec.name not in self.entries:
                self.register(spec)

    def batcher(self, name: str, **options: Any) -> Batcher:
        """The one `Batcher` of model `name` (made on first ask): calls from every session that shares
        this manager are gathered into one, run with the model pinned, at its current precision."""
        with self._lock:
            batcher = self._batchers.get(name)
            if batcher is None:

                def run(inputs: torch.Tensor) -> torch.Tensor:
                    with self.use(name, on=inputs.device) as model, torch.no_grad():
                        weights = next(itertools.chain(model.parameters(), model.buffers()))
                        return model(inputs.to(weights.device, weights.dtype))

                batcher = self._batchers[name] = Batcher(run, **options)
            return batcher

    # ----------------------------------------------------------------- use

    def acquire(self, name: str, *, on: torch.device | None = None) -> nn.Module:
        """The model, ready on its device, pinned until `release(name)`. `on`: the device the
        caller's data is on; a model placed elsewhere costs a copy of the input (counted).

        A miss builds or restores the model outside the lock; a request for a model another
        request is loading waits for that load instead of starting a second one."""
        with self._lock:
            entry = self._entry(name)
            while entry.loading:
                self._settled.wait()
            entry.pins += 1  # from here on nothing evicts it, whatever the load below takes
            if entry.level in ("device", "cpu"):  # resident (a fallback tries the device again in `housekeeping`)
                entry.hits += 1
                miss = False
            else:
                entry.misses += 1
                miss = True
                prior = self._claim(entry)
        if miss:
            try:
                self._bring_back(entry, prior)
            except BaseException:
                with self._lock:
                    entry.pins -= 1
                raise
        with self._lock:
            self._touch(entry)
            if on is not None and entry.module is not None and self.device_of(name) != on:
                self.copies += 1
            assert entry.module is not None
            return entry.module

    def release(self, name: str) -> None:
        with self._lock:
            entry = self._entry(name)
            if entry.pins <= 0:
                raise RuntimeError(f"model {name!r} released more often than acquired")
            entry.pins -= 1
            if entry.pins == 0 and entry.pending_precision is not None:
                precision, entry.pending_precision = entry.pending_precision, None
                self.set_precision(name, precision)

    @contextlib.contextmanager
    def use(self, name: str, *, on: torch.device | None = None) -> Iterator[nn.Module]:
        """`with manager.use("fer") as model:` — acquire, and release however the block ends."""
        module = self.acquire(name, on=on)
        try:
            yield module
        finally:
            self.release(name)

    def device_of(self, name: str) -> torch.device | None:
        """Where the model runs now (None when not loaded)."""
        entry = self._entry(name)
        if entry.level == "device" and entry.pool is not None:
            return entry.pool.device
        if entry.level == "cpu":
            return torch.device("cpu")
        return None

    # ----------------------------------------------------------------- placement
    # A load runs in three steps: claim the entry (under the lock), build or move the model
    # (outside it, with its room reserved in a zone first), then commit (under the lock).

    def _claim(self, entry: Entry) -> str:
        """Mark `entry` as being loaded by the caller (lock held); its level before, to go back to."""
        prior = entry.level
        entry.loading, entry.level = True, "loading"  # no longer counted in host memory or on the CPU
        return prior

    def _settle(self, entry: Entry) -> None:
        with self._lock:
            entry.loading = False
            if entry.level == "loading":  # the load failed before anything was placed
                entry.module, entry.level = None, "disk"
            self._settled.notify_all()

    def _bring_back(self, entry: Entry, prior: str, *, evict: bool = True) -> bool:
        """Load or restore a claimed `entry` onto a device, or the CPU as a fallback. Runs without
        the lock. `evict=False`: only into room free as things are; when there is none, the model
        goes back where it was (`prior`) and False is returned."""
        try:
            module = entry.module
            if module is None:  # on disk: build it from its weights file
                started = self.timer()
                module = entry.spec.loader()
                if entry.precision != "fp32":
                    module = _convert(module, entry.precision)
                took = self.timer() - started
                with self._lock:
                    entry.load_s = took
                    entry.load_s_total += took
                    entry.nbytes = module_bytes(module)
                    entry.loads += 1
            placed = self._place(entry, module, from_host=prior in ("host", "cpu"), evict=evict)
            if not placed:
                with self._lock:
                    entry.module, entry.level = (module, prior) if prior in ("host", "cpu") else (None, "disk")
            return placed
        finally:
            self._settle(entry)

    def _place(self, entry: Entry, module: nn.Module, *, from_host: bool, evict: bool = True) -> bool:
        """Reserve room, copy the model there, commit. An out-of-memory error while copying evicts
        from that device and tries once more; a second one falls back to the CPU."""
        for attempt in (1, 2):
            with self._lock:
                spot = self._find_room(entry) if evict else self._room_without_evicting(entry)
                if spot is None:
                    if not evict:
                        return False
                    self._fall_back(entry, module)
                    return True
                pool, zone = spot
                pool.add(zone, entry.nbytes)  # reserved: no other load takes this room while the copy runs
            started = self.timer()
            try:
                moved, peak = _move(module, pool, entry.nbytes)
            except torch.cuda.OutOfMemoryError:
                module = module.to("cpu")  # what was copied before the failure comes back
                with self._lock:
                    pool.remove(zone, entry.nbytes)  # the reservation
                    free = pool.device_free()
                    self._note(
                        f"{entry.name}: out of memory placing {entry.nbytes} bytes on {pool.key} "
                        f"(driver reports {free} bytes free; attempt {attempt})"
                    )
                    if not evict:  # preloading or moving a fallback back: it stays where it was
                        return False
                    if attempt == 1 and self._make_device_room(pool, entry):
                        continue
                    self._fall_back(entry, module, why=f"out of memory on {pool.key}")
                    return True
            except BaseException:
                with self._lock:
                    pool.remove(zone, entry.nbytes)  # the reservation
                raise
            with self._lock:
                entry.load_peak = max(entry.nbytes, peak)
                if from_host:
                    entry.restore_s = self.timer() - started
                    entry.restores += 1
                entry.module, entry.level, entry.pool, entry.zone = moved, "device", pool, zone
            return True
        raise AssertionError("unreachable: the second attempt returns")

    def _zones_for(self, entry: Entry) -> list[str]:
        return [entry.home] + (["flexible"] if entry.home != "flexible" else [])

    def _pools_by_room(self, zone: str) -> list[DevicePool]:
        return sorted((p for p in self.pools if zone in p.zones), key=lambda p: p.free(zone) * p.speed, reverse=True)

    def _short_on_device(self, pool: DevicePool, entry: Entry) -> int:
        """Bytes the driver lacks for the model's load peak on `pool` (0 on a simulated pool)."""
        free = pool.device_free()
        if free is None:
            return 0
        return max(0, max(entry.load_peak, entry.nbytes) - free)

    def _find_room(self, entry: Entry) -> tuple[DevicePool, str] | None:
        """Its zone, then flexible, on the roomiest device; then the same after evicting, the slower
        device giving up room first (the faster keeps the models it runs faster)."""
        room = self._room_without_evicting(entry)
        if room is not None:
            return room
        for zone in self._zones_for(entry):
            pools = sorted((p for p in self.pools if zone in p.zones), key=lambda p: (p.speed, -p.free(zone)))
            for pool in pools:
                need = max(entry.nbytes - pool.free(zone), self._short_on_device(pool, entry))
                victims = self._victims(pool, zone, need, entry.spec.priority)
                if victims is not None:
                    for victim in victims:
                        self._evict(victim, reason=f"room for {entry.name}")
                    if victims:
                        _release_cache(pool)  # so the driver's free reading shows what was freed
                    return pool, zone
        return None

    def _room_without_evicting(self, entry: Entry) -> tuple[DevicePool, str] | None:
        """Its zone, then flexible, on the roomiest device that holds it as things are (on CUDA,
        with the driver reporting free memory for its load peak)."""
        for zone in self._zones_for(entry):
            for pool in self._pools_by_room(zone):
                if pool.free(zone) >= entry.nbytes and not self._short_on_device(pool, entry):
                    return pool, zone
        return None

    def _make_device_room(self, pool: DevicePool, entry: Entry) -> bool:
        """After an out-of-memory error: evict from every zone of `pool` the lowest-valued models
        worth the model's load peak, and release the cache. False if nothing can go."""
        need = max(entry.load_peak, entry.nbytes)
        for zone in pool.zones:
            victims = self._victims(pool, zone, need, entry.spec.priority)
            if victims:
                for victim in victims:
                    self._evict(victim, reason=f"out of memory placing {entry.name}")
                _release_cache(pool)
                return True
        return False

    def _evictable(self, entry: Entry, pool: DevicePool, *, high_too: bool) -> bool:
        priority = entry.spec.priority
        if entry.pins or entry.loading or priority == "critical":
            return False
        if priority == "high":
            return high_too or pool.level() != "ok"
        return True

    def _victims(self, pool: DevicePool, zone: str, need: int, requester: Priority) -> list[Entry] | None:
        """The lowest-valued models in `zone` of `pool` that free `need` bytes, or None if they cannot.

        `high` models are candidates only when the device is past its warning threshold, or
        for a `critical` requester once the others cannot free enough; `critical` ones never."""
        passes = (False, True) if requester == "critical" else (False,)
        for high_too in passes:
            candidates = [
                e
                for e in self.entries.values()
                if e.level == "device"
                and e.pool is pool
                and e.zone == zone
                and self._evictable(e, pool, high_too=high_too)
            ]
            order = (lambda e: e.last_use) if self.policy == "lru" else (lambda e: e.value)
            chosen, freed = [], 0
            for candidate in sorted(candidates, key=order):
                if freed >= need:
                    break
                chosen.append(candidate)
                freed += candidate.nbytes
            if freed >= need:
                return chosen
        return None

    def _fall_back(self, entry: Entry, module: nn.Module, *, why: str | None = None) -> None:
        free = {f"{p.key}/{z}": p.free(z) for z in self._zones_for(entry) for p in self.pools if z in p.zones}
        where = ", ".join(f"{k}: {v / MB:.1f} MB ({v} bytes) free" for k, v in free.items())
        for pool in self.pools:
            device_free = pool.device_free()
            if device_free is not None:
                where += f", {pool.key} driver: {device_free} bytes free"
        if why is not None:
            where = f"{why}; {where}"
        if not entry.spec.cpu_fallback or any(pool.host for pool in self.pools):
            raise ModelMemoryError(
                f"model {entry.name!r} needs {entry.nbytes / MB:.1f} MB ({entry.nbytes} bytes) and does not fit "
                f"({where}){'' if entry.spec.cpu_fallback else '; it may not run on the CPU'}"
            )
        entry.module, entry.level, entry.pool, entry.zone = module.to("cpu"), "cpu", None, None
        entry.fallbacks += 1
        self._note(f"{entry.name}: no device room ({where}); running on the CPU")

    # ----------------------------------------------------------------- eviction and levels

    def _evict(self, entry: Entry, *, reason: str) -> None:
        """Move a device-level model down: to host memory if the host budget has room, else to disk."""
        assert entry.level == "device" and entry.pool is not None and entry.zone is not None
        entry.pool.remove(entry.zone, entry.nbytes)
        entry.evictions += 1
        self._inflation = max(self._inflation, entry.value)
        to_host = self.host_budget and self._host_room(entry.nbytes)
        if to_host:
            module = entry.module
            assert module is not None
            module = module.to("cpu")
            if entry.pool.real:
                _pin(module)
            entry.module, entry.level = module, "host"
            self.host_peak = max(self.host_peak, self.host_used)
        else:
            entry.module, entry.level = None, "disk"
        self._note(f"{entry.name}: evicted to {entry.level} ({reason})")
        entry.pool, entry.zone = None, None

    def _host_room(self, nbytes: int) -> bool:
        """Make room in host memory by sending its least recently used models to disk; False if it cannot."""
        if nbytes > self.host_budget:
            return False
        waiting = sorted((e for e in self.entries.values() if e.level == "host"), key=lambda e: e.last_use)
        for entry in waiting:
            if self.host_used + nbytes <= self.host_budget:
                break
            entry.module, entry.level = None, "disk"
        return self.host_used + nbytes <= self.host_budget

    def unload(self, name: str) -> bool:
        """Send a model back to its weights file now (unless it is in use); True if it was loaded."""
        with self._lock:
            entry = self._entry(name)
            if entry.pins or entry.loading or entry.level == "disk":
                return False
            if entry.level == "device":
                assert entry.pool is not None and entry.zone is not None
                entry.pool.remove(entry.zone, entry.nbytes)
            entry.module, entry.level, entry.pool, entry.zone = None, "disk", None, None
            return True

    def unload_idle(self) -> list[str]:
        """Unload every model unused for `idle_unload_s` (not pinned, not `critical`: those stay
        resident however long a pause lasts); the names unloaded."""
        if not self.idle_unload_s:
            return []
        with self._lock:
            now = self.clock()
            idle = [
                e.name
                for e in self.entries.values()
                if e.level != "disk"
                and not e.pins
                and e.spec.priority != "critical"
                and now - e.last_use >= self.idle_unload_s
            ]
            done = [name for name in idle if self.unload(name)]
            for name in done:
                self._note(f"{name}: unloaded after {self.idle_unload_s:g} s unused")
            return done

    def relieve(self) -> list[str]:
        """Past a device's critical threshold: unload its low-priority models, largest first, until under
        the warning threshold. The names unloaded."""
        done = []
        with self._lock:
            for pool in self.pools:  # each device past its own threshold gives up its own low models
                if pool.level() != "critical":
                    continue
                low = sorted(
                    (e for e in self.entries.values() if e.pool is pool and e.spec.priority == "low" and not e.pins),
                    key=lambda e: e.nbytes,
                    reverse=True,
                )
                for entry in low:
                    if pool.level() == "ok":
                        break
                    self._evict(entry, reason=f"{pool.key} past its critical threshold")
                    done.append(entry.name)
                    _release_cache(pool)  # so the driver's reading shows what was freed
        return done

    def retry_fallbacks(self) -> list[str]:
        """Move models running on the CPU for want of room back to a device that has room now."""
        moved: list[str] = []
        tried: set[str] = set()
        while True:
            with self._lock:
                entry = next(
                    (
                        e
                        for e in self.entries.values()
                        if e.name not in tried
                        and e.level == "cpu"
                        and not e.pins
                        and not e.loading
                        and self._room_without_evicting(e) is not None
                    ),
                    None,
                )
                if entry is None:
                    return moved
                tried.add(entry.name)
                prior = self._claim(entry)
            if self._bring_back(entry, prior, evict=False):  # the copy runs outside the lock
                moved.append(entry.name)

    def housekeeping(self) -> None:
        """The timer's round: idle unloading, relief past the critical threshold, fallbacks moved back
        to a device with room, preloading the predicted next model, and releasing cached device
        blocks when fragmentation passes the limit (frames in flight keep their own blocks)."""
        self.unload_idle()
        self.relieve()
        self.retry_fallbacks()
        self.preload_predicted()
        self.between_frames()

    async def watch(self, period_s: float = 1.0) -> None:
        """`housekeeping` every `period_s`, off the event loop (a load may take a while). Run as a task.

        Every run sharing the manager starts one; only the oldest still running does the work,
        so ten sessions do not run ten rounds, and the round goes on while any run does.
        """
        token = object()
        self._watchers.append(token)
        try:
            while True:
                await asyncio.sleep(period_s)
                if self._watchers[0] is token:
                    try:
                        await asyncio.to_thread(self.housekeeping)
                    except Exception as exc:  # one bad round (a loader failing) must not end the rounds
                        log.warning("models: housekeeping round failed: %s: %s", type(exc).__name__, exc)
        finally:
            self._watchers.remove(token)

    # ----------------------------------------------------------------- prediction

    def predicted_next(self, after: str) -> str | None:
        """The model most often used right after `after` so far, if any."""
        following = self._next.get(after)
        return following.most_common(1)[0][0] if following else None

    def preload_predicted(self) -> str | None:
        """Load the model the usage history predicts next, if it is on disk or in host memory and fits
        without evicting anything, and no device is past its warning threshold. Its name, or None."""
        if not self.preload_enabled or self._last_used is None:
            return None
        with self._lock:
            after = self._last_used
            name = self.predicted_next(after) if after is not None else None
            if name is None:
                return None
            entry = self.entries[name]
            if entry.level not in ("disk", "host") or entry.loading or entry.nbytes == 0:  # resident, or unmeasured
                return None
            if any(pool.level() != "ok" for pool in self.pools) or self._room_without_evicting(entry) is None:
                return None
            prior = self._claim(entry)
        if not self._bring_back(entry, prior, evict=False):  # the load runs outside the lock
            return None
        with self._lock:
            self._note(f"{name}: preloaded (usually follows {after})")
        return name

    # ----------------------------------------------------------------- precision and housekeeping

    def set_precision(self, name: str, precision: str) -> None:
        """Hold the model at `precision` (the scheduler's rung); its size is measured again.

        Lowering converts the model where it is (device, CPU fallback or host memory); going back
        to fp32 reloads from the weights file. A model in use by a frame (or being loaded)
        changes when that frame is done with it.
        """
        with self._lock:
            entry = self._entry(name)
            if entry.pins or entry.loading:
                entry.pending_precision = precision if precision != entry.precision else None
                return
            entry.pending_precision = None
            if entry.precision == precision:
                return
            if precision == "fp32":
                self.unload(name)  # a lowered model cannot be raised again: rebuilt from its file on next use
            elif entry.level != "disk":  # on a device, on the CPU as a fallback, or waiting in host memory
                self._convert_in_place(entry, precision)
            entry.precision = precision

    def _convert_in_place(self, entry: Entry, precision: str) -> None:
        assert entry.module is not None
        module = _convert(entry.module, precision)
        nbytes = module_bytes(module)
        if entry.level == "device":  # host and CPU-fallback bytes follow from `nbytes`
            assert entry.pool is not None and entry.zone is not None
            entry.pool.remove(entry.zone, entry.nbytes)
            entry.pool.add(entry.zone, nbytes)
        entry.module, entry.nbytes = module, nbytes

    def between_frames(self) -> None:
        """Release cached device blocks when fragmentation (reserved − allocated) passes the limit.

        `fragmentation` reports the total over every GPU, read before any release.
        """
        total = 0
        for pool in self.pools:
            if not pool.real:
                continue
            fragmentation = torch.cuda.memory_reserved(pool.device) - torch.cuda.memory_allocated(pool.device)
            total += fragmentation
            if fragmentation > pool.fragmentation_limit:
                _release_cache(pool)
                self.cache_releases += 1
                log.info(
                    "models: %s: released %d cached bytes (over %d)", pool.key, fragmentation, pool.fragmentation_limit
                )
        self.fragmentation = total

    def _touch(self, entry: Entry) -> None:
        entry.uses += 1
        entry.last_use = self.clock()
        cost = self._reload_cost(entry)
        size_mb = max(entry.nbytes / MB, 1e-3)
        entry.value = self._inflation + PRIORITY_WEIGHT[entry.spec.priority] * entry.uses * cost / size_mb
        if self._last_used is not None and self._last_used != entry.name:
            self._next[self._last_used][entry.name] += 1
        self._last_used = entry.name

    def _reload_cost(self, entry: Entry) -> float:
        """Seconds to bring it back from where an eviction would send it now."""
        if self.host_budget and entry.nbytes <= self.host_budget:
            return entry.restore_s if entry.restore_s is not None else entry.nbytes / HOST_BANDWIDTH
        return max(entry.load_s, 1e-6)

    def _entry(self, name: str) -> Entry:
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(self.entries) or "none"
            raise KeyError(f"model {name!r} is not registered (registered: {known})") from None

    def _note(self, message: str) -> None:
        log.info("models: %s", message)
        self.events.append(message)
        del self.events[:-100]

    # ----------------------------------------------------------------- report

    def status(self) -> dict[str, Any]:
        """What is loaded where, with counters: for the run report and /api/resource/status."""
        with self._lock:
            entries = list(self.entries.values())
            return {
                "policy": self.policy,
                "devices": [
                    {
                        "key": pool.key,
                        "zones_mb": {z: round(c / MB, 1) for z, c in pool.zones.items()},
                        "used_mb": {z: round(u / MB, 3) for z, u in pool.used.items()},
                        "reserved_mb": round(pool.reserved / MB, 1),
                        "peak_mb": round(pool.peak / MB, 3),
                        "zone_peaks_mb": {z: round(u / MB, 3) for z, u in pool.zone_peaks.items()},
                        "in_use": round(pool.in_use(), 4),
                        "level": pool.level(),
                    }
                    for pool in self.pools
                ],
                "host": {
                    "budget_mb": round(self.host_budget / MB, 1),
                    "used_mb": round(self.host_used / MB, 3),
                    "peak_mb": round(self.host_peak / MB, 3),
                    "cpu_fallback_mb": round(self.fallback_used / MB, 3),
                },
                "models": [
                    {
                        "name": e.name,
                        "priority": e.spec.priority,
                        "level": e.level,
                        "device": str(self.device_of(e.name)) if self.device_of(e.name) is not None else None,
                        "zone": e.zone,
                        "size_mb": round(e.nbytes / MB, 3),
                        "load_peak_mb": round(e.load_peak / MB, 3),
                        "precision": e.precision,
                        "load_s": round(e.load_s, 4),
                        "load_s_total": round(e.load_s_total, 4),
                        "last_use_s_ago": round(self.clock() - e.last_use, 3) if e.uses else None,
                        "uses": e.uses,
                        "hits": e.hits,
                        "misses": e.misses,
                        "evictions": e.evictions,
                        "fallbacks": e.fallbacks,
                        "loads": e.loads,
                        "restores": e.restores,
                    }
                    for e in entries
                ],
                "totals": {
                    key: sum(getattr(e, key) for e in entries)
                    for key in ("hits", "misses", "evictions", "fallbacks", "loads", "restores")
                },
                "copies": self.copies,
                "fragmentation_mb": round(self.fragmentation / MB, 3),
                "cache_releases": self.cache_releases,
                "batchers": {
                    name: {
                        "users": b.users,
                        "calls": b.calls,
                        "requests": b.requests,
                        "rows": b.rows,
                        "wait_ms": b.wait_s * 1000,
                        "max_rows": b.max_batch,
                    }
                    for name, b in self._batchers.items()
                },
                "events": self.events[-20:],
            }


def _convert(module: nn.Module, precision: str) -> nn.Module:
    from models.precision import with_precision

    device = next(itertools.chain(module.parameters(), module.buffers()), torch.empty(0)).device
    if precision == "int8" and device.type != "cpu":
        raise ValueError("int8 dynamic quantization runs on the CPU")
    return with_precision(module, precision)


def _pin(module: nn.Module) -> None:
    """Page-lock a CPU module's tensors, so a restore to the GPU is one DMA copy."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        tensor.data = tensor.data.pin_memory()


def _release_cache(pool: DevicePool) -> None:
    """Return the pool's cached, unallocated blocks to the driver (a simulated pool has none)."""
    if pool.real:
        with torch.cuda.device(pool.device):  # empty_cache acts on the current device only
            torch.cuda.empty_cache()


def _move(module: nn.Module, pool: DevicePool, nbytes: int) -> tuple[nn.Module, int]:
    """`module` on the pool's device, and the most bytes the copy took there (its load peak)."""
    if not pool.real:
        return module.to(pool.device), nbytes
    before = torch.cuda.memory_allocated(pool.device)
    torch.cuda.reset_peak_memory_stats(pool.device)
    module = module.to(pool.device)
    torch.cuda.synchronize(pool.device)
    return module, torch.cuda.max_memory_allocated(pool.device) - before
