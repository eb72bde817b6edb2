"""A folder or list of videos across a Ray cluster: one task per file.

Each file is one Ray task running the same job as on one machine (`run_job`), so its output
and analytics are written under temporary names and renamed only when complete: a task that
is retried after its worker died, or cancelled, never leaves a file that looks finished. Each
task declares what its graph needs (`--ray-cpus`, and on a GPU the share of a card its device
profile gives one file: see `resources.py`) and keeps to it once running; it is retried up to
`max_retries` times when its worker dies, while a file whose input is bad fails as it would on
one machine, with the same reason, and is not retried. Inputs and outputs must be on a path
every worker sees (a shared disk); results and failures come back into one report.

Ray is imported only here, and this module only when `--ray` is given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from pipeline.cluster.resources import file_task_resources, task_profile
from pipeline.device import grant_cpu_cores
from pipeline.job import FolderItem, JobOptions, JobResult, run_job
from pipeline.model_manager.manager import ModelManager

log = logging.getLogger("pipeline")

DEFAULT_MAX_RETRIES = 2  # a file whose worker dies is tried this many more times
PROGRESS_EVERY_S = 0.5
CONNECT_TIMEOUT_S = 5.0  # s for the cluster's address to answer at all


class ClusterUnreachable(ConnectionError):
    """The Ray cluster at the given address could not be joined."""


def connect(address: str) -> dict[str, Any]:
    """Join the cluster at `address`; `auto`: a cluster already running here, else a local one.

    Ray's `init` puts its own SIGTERM handler (exit at once) in place of the caller's; the
    caller's is put back, so SIGTERM still stops a job the way Ctrl-C does.
    """
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    if address != "auto":
        _check_reachable(address)
    quiet = {"log_to_driver": False, "include_dashboard": False, "configure_logging": False}
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if on_main else None
    try:
        if address == "auto":
            try:
                ray.init(address="auto", **quiet)
            except ConnectionError:
                log.info("ray: no cluster running here; starting one on this machine")
                ray.init(**quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterUnreachable(f"--ray {address}: cannot join the cluster ({first})") from None
    finally:
        if on_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return ray.cluster_resources()


def _check_reachable(address: str) -> None:
    """Fail fast on an address nothing answers at: Ray itself retries for minutes before giving up."""
    where = address.split("://", 1)[-1]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnreachable(f"--ray {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterUnreachable(
            f"--ray {address}: cannot reach the cluster (nothing answers at {host}:{port}: {exc.strerror or exc})"
        ) from None


_worker_models: dict[tuple[str, str], ModelManager] = {}  # per worker process: models load once, not per file


def _process_file(item: FolderItem, options: JobOptions) -> JobResult:
    """One file, on a worker: the single-machine job, its output renamed only when complete.

    A worker process runs many files in turn; its models stay loaded between them, as they do
    across the files of a folder run on one machine. The job keeps to the CPUs Ray assigned
    this task, not the node's.
    """
    import ray

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    grant_cpu_cores(assigned_cpus(ray.get_runtime_context().get_assigned_resources()))
    profile = options.device_profile
    key = (str(options.device), profile.name if profile is not None else "")
    models = _worker_models.get(key)
    if models is None:
        models = _worker_models[key] = ModelManager.for_device(options.device, profile)
    return asyncio.run(run_job(str(item.source), str(item.output), options, keep_partial=True, models=models))


def assigned_cpus(assigned: dict[str, float]) -> int:
    """Whole cores from what Ray assigned a task (a fraction of a CPU still gets one thread)."""
    return max(1, int(assigned.get("CPU", 1)))


def failure_reason(exc: Exception, tries: int) -> str:
    """One line for a task that failed: the job's own error, or how its worker died."""
    import ray

    cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else None
    if cause is not None:  # the job raised (a bad input): its message, as on one machine
        return str(cause).strip() or type(cause).__name__
    if isinstance(exc, ray.exceptions.TaskCancelledError):
        return "cancelled"
    return f"its worker died on each of {tries} tr{'y' if tries == 1 else 'ies'} (ray: {type(exc).__name__})"


class ClusterProgress:
    """One line for the whole job: files done, aggregate fps, ETA (a bar on a terminal)."""

    def __init__(self, files: int, *, interactive: bool | None = None):
        from tqdm import tqdm

        self.files = files
        self.done = 0  # skipped files included
        self.processed = 0  # files a task ran
        self.frames = 0
        self.started = time.monotonic()
        self._logged = 0.0
        interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bar = tqdm(total=files, unit="file", desc="cluster", dynamic_ncols=True) if interactive else None

    def file_done(self, result: JobResult) -> None:
        """Count a finished file; a skipped one counts as done but not in the rate or the ETA."""
        self.done += 1
        self.frames += result.frames_out
        if result.status != "skipped":
            self.processed += 1
        elapsed = time.monotonic() - self.started
        fps = self.frames / max(elapsed, 1e-9)
        status = f"{fps:.0f} fps"
        if self.processed:
            status += f", ETA {elapsed / self.processed * (self.files - self.done):.0f} s"
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(status)
        elif time.monotonic() - self._logged >= PROGRESS_EVERY_S or self.done == self.files:
            self._logged = time.monotonic()
            log.info("cluster: %d/%d file(s), %s", self.done, self.files, status)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run_on_ray(
    items: list[FolderItem],
    options: JobOptions,
    *,
    address: str = "auto",
    overwrite: bool = False,
    cpus_per_file: float = 1.0,
    max_retries: int = DEFAULT_MAX_RETRIES,
    progress: ClusterProgress | None = None,
    stopped: Callable[[], bool] = lambda: False,
) -> list[JobResult]:
    """Every item as a Ray task; results in the items' order. `stopped()` cancels what has not finished.

    Blocking: from async code, run it in a thread (`asyncio.to_thread`) so that the loop's
    signal handlers can still set what `stopped()` reads.
    """
    import ray

    cluster = connect(address)
    needs = file_task_resources(options, cpus=cpus_per_file)
    log.info(
        "ray: %d file(s) over a cluster of %g CPU(s), %g GPU(s); each file takes %g CPU(s), %g GPU(s)",
        len(items),
        cluster.get("CPU", 0),
        cluster.get("GPU", 0),
        needs.num_cpus,
        needs.num_gpus,
    )
    task = ray.remote(_process_file).options(
        num_cpus=needs.num_cpus,
        num_gpus=needs.num_gpus,
        max_retries=max_retries,
        retry_exceptions=False,  # a bad input fails the same way every time: only a dead worker is retried
    )
    options = dataclasses.replace(options, device_profile=task_profile(options))
    results: dict[int, JobResult] = {}
    pending: dict[Any, int] = {}

    def settle(index: int, result: JobResult) -> None:
        results[index] = result
        log.info("%s: %s", items[index].source.name, result.summary())
        if progress is not None:
            progress.file_done(result)

    for index, item in enumerate(items):
        if item.output.exists() and not overwrite:
            settle(index, item.skipped())
            continue
        item_options = dataclasses.replace(options, analytics=item.analytics)
        pending[task.remote(item, item_options)] = index
    while pending:
        if stopped():
            for ref in pending:
                ray.cancel(ref, force=True)  # the worker is killed: its output stays under the partial name
            for index in pending.values():
                item = items[index]
                results[index] = JobResult(str(item.source), str(item.output), "interrupted", "cancelled")
            break
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=PROGRESS_EVERY_S)
        for ref in ready:
            index = pending.pop(ref)
            item = items[index]
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the task raised, or its worker died more often than retried
                result = JobResult(str(item.source), str(item.output), "failed", failure_reason(exc, max_retries + 1))
            settle(index, result)
    return [results[index] for index in range(len(items)) if index in results]
