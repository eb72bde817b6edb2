"""The model manager: which models are in device memory, which wait in host memory, which on disk.

Several models share one device. Each is registered with a loader (which builds it from its
weights file: the disk level), a priority and a zone. `acquire(name)` returns the model on the
device it was placed on, loading or restoring it first, and pins it until `release(name)`; a
pinned model (in use by a frame in flight) is never evicted.

Placement, in order: the model's zone on the device with the most free room (weighted by the
device's speed); the `flexible` zone; evicting lower-valued models from those zones; host memory
on the CPU if the model may fall back there; else `ModelMemoryError`, naming the model, the
bytes it needs and the bytes free.

Eviction (`pipeline.model_manager.eviction`): the lowest-valued models give up their room, the
value weighing priority, uses, reload cost and size, aging out what is not used. `critical`
models are never evicted. `high` ones are evicted only under pressure: when their device is past
its warning threshold, or for a `critical` model that nothing else can make room for. When room
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
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from pipeline.device_profiles import MB, DeviceProfile
from pipeline.errors import PipelineError
from pipeline.model_manager import eviction, transfer, upkeep
from pipeline.model_manager.accounting import DevicePool, Entry, ModelSpec, module_bytes
from pipeline.model_manager.batching import Batcher
from pipeline.model_manager.eviction import Policy, Priority
from pipeline.model_manager.status import status

log = logging.getLogger(__name__)


class ModelMemoryError(PipelineError):
    """A model that fits nowhere: not on any device, not on the CPU (or not allowed there)."""


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
        self.history = upkeep.UsageHistory()  # which model follows which: what preloading predicts
        self.events: list[str] = []
        self.batchers: dict[str, Batcher] = {}
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
            batcher = self.batchers.get(name)
            if batcher is None:

                def run(inputs: torch.Tensor) -> torch.Tensor:
                    with self.use(name, on=inputs.device) as model, torch.no_grad():
                        weights = next(itertools.chain(model.parameters(), model.buffers()))
                        return model(inputs.to(weights.device, weights.dtype))

                batcher = self.batchers[name] = Batcher(run, **options)
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
                    module = transfer.convert(module, entry.precision)
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
                moved, peak = transfer.move(module, pool, entry.nbytes)
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
                        transfer.release_cache(pool)  # so the driver's free reading shows what was freed
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
                transfer.release_cache(pool)
                return True
        return False

    def _victims(self, pool: DevicePool, zone: str, need: int, requester: Priority) -> list[Entry] | None:
        """The models in `zone` of `pool` to evict for `need` bytes (`eviction.victims`), or None."""
        placed = [e for e in self.entries.values() if e.level == "device" and e.pool is pool and e.zone == zone]
        return eviction.victims(placed, need, requester=requester, device_level=pool.level(), policy=self.policy)

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
                transfer.pin(module)
            entry.module, entry.level = module, "host"
            self.host_peak = max(self.host_peak, self.host_used)
        else:
            entry.module, entry.level = None, "disk"
        self._note(f"{entry.name}: evicted to {entry.level} ({reason})")
        entry.pool, entry.zone = None, None

    def _host_room(self, nbytes: int) -> bool:
        """Make room in host memory by sending its least recently used models to disk; False if it cannot."""
        waiting = [e for e in self.entries.values() if e.level == "host"]
        spilled = eviction.host_spill(waiting, used=self.host_used, budget=self.host_budget, nbytes=nbytes)
        for entry in spilled or []:
            entry.module, entry.level = None, "disk"
        return spilled is not None

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
        """Unload every model unused for `idle_unload_s` (`upkeep.idle`); the names unloaded."""
        with self._lock:
            idle = upkeep.idle(self.entries.values(), now=self.clock(), idle_unload_s=self.idle_unload_s)
            done = [entry.name for entry in idle if self.unload(entry.name)]
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
                for entry in upkeep.relief_order(e for e in self.entries.values() if e.pool is pool):
                    if pool.level() == "ok":
                        break
                    self._evict(entry, reason=f"{pool.key} past its critical threshold")
                    done.append(entry.name)
                    transfer.release_cache(pool)  # so the driver's reading shows what was freed
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
        return self.history.predicted_next(after)

    def preload_predicted(self) -> str | None:
        """Load the model the usage history predicts next, if it is on disk or in host memory and fits
        without evicting anything, and no device is past its warning threshold. Its name, or None."""
        if not self.preload_enabled or self.history.last is None:
            return None
        with self._lock:
            after = self.history.last
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
        module = transfer.convert(entry.module, precision)
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
                transfer.release_cache(pool)
                self.cache_releases += 1
                log.info(
                    "models: %s: released %d cached bytes (over %d)", pool.key, fragmentation, pool.fragmentation_limit
                )
        self.fragmentation = total

    def _touch(self, entry: Entry) -> None:
        entry.uses += 1
        entry.last_use = self.clock()
        cost = eviction.reload_cost(
            nbytes=entry.nbytes, host_budget=self.host_budget, restore_s=entry.restore_s, load_s=entry.load_s
        )
        entry.value = eviction.value(
            inflation=self._inflation,
            priority=entry.spec.priority,
            uses=entry.uses,
            reload_cost_s=cost,
            nbytes=entry.nbytes,
        )
        self.history.used(entry.name)

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
            return status(self)
