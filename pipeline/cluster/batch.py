"""A folder or list of videos across a Ray cluster: one task per file.

Each file is one Ray task running the same job as on one machine (`run_job`), so its output is
written under a temporary name and renamed only when complete: a task that is retried after
its worker died, or cancelled, never leaves a file that looks finished. Each task declares what
its graph needs (`num_cpus`; `num_gpus` = 1 on a CUDA device) and is retried up to
`max_retries` times when its worker dies; a file whose input is bad fails as it would on one
machine, without retries. Inputs and outputs must be on a path every worker sees (a shared
disk); results and failures come back into one report.

Ray is imported only here, and this module only when `--ray` is given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from pipeline.job import FolderItem, JobOptions, JobResult, run_job
from pipeline.memory import ModelManager

log = logging.getLogger("pipeline")

DEFAULT_MAX_RETRIES = 2  # a file whose worker dies is tried this many more times
PROGRESS_EVERY_S = 0.5


def connect(address: str) -> dict[str, Any]:
    """Join the cluster at `address`; `auto`: a cluster already running here, else a local one."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    quiet = {"log_to_driver": False, "include_dashboard": False, "configure_logging": False}
    if address == "auto":
        try:
            ray.init(address="auto", **quiet)
        except ConnectionError:
            log.info("ray: no cluster running here; starting one on this machine")
            ray.init(**quiet)
    else:
        ray.init(address=address, **quiet)
    return ray.cluster_resources()


_worker_models: dict[tuple[str, str], ModelManager] = {}  # per worker process: models load once, not per file


def _process_file(item: FolderItem, options: JobOptions) -> JobResult:
    """One file, on a worker: the single-machine job, its output renamed only when complete.

    A worker process runs many files in turn; its models stay loaded between them, as they do
    across the files of a folder run on one machine.
    """
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    profile = options.device_profile
    key = (str(options.device), profile.name if profile is not None else "")
    models = _worker_models.get(key)
    if models is None:
        models = _worker_models[key] = ModelManager.for_device(options.device, profile)
    return asyncio.run(
        run_job(str(item.source), str(item.output), options, keep_partial_when_interrupted=True, models=models)
    )


class ClusterProgress:
    """One line for the whole job: files done, aggregate fps, ETA (a bar on a terminal)."""

    def __init__(self, files: int, *, interactive: bool | None = None):
        from tqdm import tqdm

        self.files = files
        self.done = 0
        self.frames = 0
        self.started = time.monotonic()
        self._logged = 0.0
        interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bar = tqdm(total=files, unit="file", desc="cluster", dynamic_ncols=True) if interactive else None

    def file_done(self, result: JobResult) -> None:
        self.done += 1
        self.frames += result.frames_out
        elapsed = time.monotonic() - self.started
        fps = self.frames / max(elapsed, 1e-9)
        eta = elapsed / self.done * (self.files - self.done)
        status = f"{fps:.0f} fps, ETA {eta:.0f} s"
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
    """Every item as a Ray task; results in the items' order. `stopped()` cancels what has not finished."""
    import ray

    resources = connect(address)
    log.info(
        "ray: %d file(s) over a cluster of %g CPU(s), %g GPU(s)",
        len(items),
        resources.get("CPU", 0),
        resources.get("GPU", 0),
    )
    task = ray.remote(_process_file).options(
        num_cpus=cpus_per_file,
        num_gpus=1 if options.device.type == "cuda" else 0,
        max_retries=max_retries,
        retry_exceptions=False,  # a bad input fails the same way every time: only a dead worker is retried
    )
    results: dict[int, JobResult] = {}
    pending: dict[Any, int] = {}
    for index, item in enumerate(items):
        if item.output.exists() and not overwrite:
            results[index] = item.skipped()
            continue
        item_options = dataclasses.replace(options, analytics=item.analytics)
        pending[task.remote(item, item_options)] = index
    while pending:
        if stopped():
            for ref in pending:
                ray.cancel(ref, force=True)
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
            except ray.exceptions.RayError as exc:  # the worker died more often than retried, or the task failed
                reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                result = JobResult(str(item.source), str(item.output), "failed", reason)
            results[index] = result
            log.info("%s: %s", item.source.name, result.summary())
            if progress is not None:
                progress.file_done(result)
    return [results[index] for index in range(len(items)) if index in results]
