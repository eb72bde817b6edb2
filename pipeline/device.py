"""The device layer: which device runs, zero-copy views between libraries, and one lane per stage.

Everything here is decided at run time. Importing this module touches no GPU and needs no driver.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, TypeVar

import numpy as np
import torch

from pipeline.errors import DeviceError

log = logging.getLogger(__name__)
T = TypeVar("T")


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn `auto`, `cpu`, `cuda` or `cuda:N` into a device this machine really has."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise DeviceError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N") from exc
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        build = "CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
        raise DeviceError(f"--device {spec}: no CUDA device is available (torch {torch.__version__}, {build})")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device("cuda", index)


@functools.cache
def cupy_module() -> ModuleType | None:
    """CuPy when it works on this machine, else None; decided once, with one log line on fallback.

    `cupy-cuda12x` imports fine without a driver and fails only on first use, so the check
    makes one real call into the CUDA runtime.
    """
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.info("cupy unavailable (%s); using NumPy", reason[:120])
        return None
    return cupy


def to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A NumPy view of a CPU tensor, sharing its memory. Device tensors raise: copies are explicit."""
    if isinstance(x, np.ndarray):
        return x
    if x.device.type != "cpu":
        raise DeviceError(f"to_numpy: tensor is on {x.device}; copy it with .cpu() first if that is meant")
    return x.numpy()


def copy_frame(dst: torch.Tensor, src: torch.Tensor | np.ndarray) -> None:
    """`dst.copy_(src)` for a frame-sized copy made on the event loop.

    On a CPU it is one plain memory copy on this thread (NumPy): torch splits a copy that size
    across its intra-op threads, and when those have gone to sleep between frames, waking them
    costs far more than the copy (tens of times more for a small plane: `bench/NOTES.md`). On a
    GPU it is torch's copy, on the current stream.
    """
    if dst.device.type == "cpu" and (isinstance(src, np.ndarray) or src.device.type == "cpu"):
        np.copyto(dst.numpy(), to_numpy(src), casting="no")
        return
    dst.copy_(to_torch(src))


def to_torch(x: Any) -> torch.Tensor:
    """A torch tensor sharing memory with `x` (torch, NumPy, CuPy or any DLPack producer)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if hasattr(x, "__dlpack__"):
        return torch.from_dlpack(x)
    raise TypeError(f"to_torch: cannot share memory with {type(x).__name__}")


def to_cupy(x: Any) -> Any:
    """A CuPy view of a CUDA tensor through DLPack. Raises where CuPy cannot run."""
    cp = cupy_module()
    if cp is None:
        raise DeviceError("to_cupy: CuPy cannot run on this machine")
    if isinstance(x, torch.Tensor) and x.device.type != "cuda":
        raise DeviceError(f"to_cupy: tensor is on {x.device}, not a CUDA device")
    return cp.from_dlpack(x)


def to_array(x: torch.Tensor) -> Any:
    """The array-library view for the tensor's device: CuPy on CUDA, NumPy on CPU. Never copies."""
    return to_cupy(x) if x.device.type == "cuda" else to_numpy(x)


def array_module(x: torch.Tensor) -> ModuleType:
    """`cupy` for CUDA tensors when CuPy works, else `numpy`: kernels written once for both."""
    if x.device.type == "cuda":
        cp = cupy_module()
        if cp is not None:
            return cp
    return np


_granted_cores: int | None = None  # cores this process was given (a Ray task's CPUs), None: the machine's


def grant_cpu_cores(cores: int | None) -> None:
    """Keep this process's stages to `cores` cores (None: every core of the machine).

    A Ray task declares the CPUs it needs and Ray packs tasks onto a node by that count; if each
    then sized torch's threads by the whole machine, N tasks would run N times the cores.
    """
    global _granted_cores
    _granted_cores = None if cores is None else max(1, cores)
    if _granted_cores is not None and torch.get_num_threads() > _granted_cores:
        torch.set_num_threads(_granted_cores)  # also for graphs with no computing stage to share them


def cpu_cores() -> int:
    """The cores this process's stages share: those granted to it, else the machine's."""
    return _granted_cores or os.cpu_count() or 1


def configure_cpu_threads(parallel_lanes: int) -> int:
    """Share the cores between stages that compute at the same time; returns torch threads per op.

    torch's thread count is per process: with several stages running matmuls at once, each op
    using every core would only fight the others for them.
    """
    cores = cpu_cores()
    threads = max(1, cores // max(1, parallel_lanes))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        log.info("cpu: %d cores shared by %d computing stages, %d torch thread(s) each", cores, parallel_lanes, threads)
    return threads


def cuda_stream_priority(stage_priority: int, highest_stage_priority: int) -> int:
    """Map a stage priority (higher = more important) onto CUDA's range (lower = sooner)."""
    least, greatest = torch.cuda.Stream.priority_range()  # e.g. (0, -5)
    span = least - greatest
    if highest_stage_priority <= 0 or span == 0:
        return least
    share = max(0, min(stage_priority, highest_stage_priority)) / highest_stage_priority
    return least - round(share * span)


MAX_CPU_NICE = 10  # the least important stage's worker threads run at this nice value (Linux)


def cpu_nice(stage_priority: int, highest_stage_priority: int) -> int:
    """Map a stage priority (higher = more important) onto a thread nice value (lower = served first).

    The most important stages keep nice 0; the least get MAX_CPU_NICE, about a tenth of the CPU
    share of a nice-0 thread when both want the same core. Only raising nice needs no privilege.
    """
    if highest_stage_priority <= 0:
        return 0
    share = max(0, min(stage_priority, highest_stage_priority)) / highest_stage_priority
    return round((1.0 - share) * MAX_CPU_NICE)


BACKGROUND_NICE = 5  # how much further back than its stage's frames a thread working beside them is served
MAX_NICE = 19  # the most Linux allows


def background_nice(stage_nice: int) -> int:
    """The nice value of a thread that works beside a stage's frames (a detector, a listener):
    on a busy CPU the frames are served first, and it takes what is left."""
    return min(MAX_NICE, stage_nice + BACKGROUND_NICE)


def set_thread_nice(nice: int) -> None:
    """Give the calling thread `nice` (Linux schedules threads one by one; elsewhere this is a no-op)."""
    if nice and sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError as exc:
            log.debug("cannot set thread nice %d: %s", nice, exc)


class Lane:
    """Where one stage's blocking work runs: its own worker thread(s) and, on CUDA, its own stream.

    The stage's priority sets both the stream's priority and the threads' nice value, so one
    number orders it on the GPU and on the CPU.

    On CPU the worker thread lets stages overlap, since torch releases the GIL inside ops. On
    CUDA the work is also queued on the stage's stream, after the events of the stages it reads
    from, and records an event of its own: ordering without a device-wide synchronize.
    """

    def __init__(
        self, name: str, device: torch.device, *, workers: int = 1, stream_priority: int = 0, cpu_nice: int = 0
    ):
        self.name = name
        self.device = device
        self.cpu_nice = cpu_nice  # its threads' nice value: CPU service order when stages compete for cores
        self._pool = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix=f"stage-{name}",
            initializer=set_thread_nice,
            initargs=(cpu_nice,),
        )
        self.stream = torch.cuda.Stream(device=device, priority=stream_priority) if device.type == "cuda" else None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on this lane and wait for it without blocking the event loop."""
        loop = asyncio.get_running_loop()
        if self.stream is None:
            return await loop.run_in_executor(self._pool, fn, *args)
        return await loop.run_in_executor(self._pool, self._on_stream, fn, args, ())

    async def run_ordered(self, fn: Callable[..., T], args: tuple, after: Iterable[Any]) -> tuple[T, Any]:
        """Like `run`, but on CUDA first wait for the `after` events; returns (result, done event)."""
        loop = asyncio.get_running_loop()
        if self.stream is None:
            return await loop.run_in_executor(self._pool, fn, *args), None
        return await loop.run_in_executor(self._pool, self._on_stream_recorded, fn, args, tuple(after))

    def _on_stream(self, fn: Callable[..., T], args: tuple, after: tuple) -> T:
        return self._on_stream_recorded(fn, args, after)[0]

    def _on_stream_recorded(self, fn: Callable[..., T], args: tuple, after: tuple) -> tuple[T, Any]:
        assert self.stream is not None
        with torch.cuda.stream(self.stream):
            for event in after:
                if event is not None:
                    self.stream.wait_event(event)
            result = fn(*args)
            done = torch.cuda.Event()
            done.record(self.stream)
        return result, done

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
