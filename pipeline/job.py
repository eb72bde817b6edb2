"""One run of the pipeline from a source to an output, and a folder of them.

A file output, and its analytics sidecar, are written under temporary names
(`name.partial.mp4`, `name.partial.jsonl`) and renamed when the run ends well, so a file under
its final name is always complete: a crash or kill leaves only `.partial` files behind, and a
folder run skips outputs that already exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.config import GraphConfig
from pipeline.device_profiles import DeviceProfile
from pipeline.errors import PipelineError, SinkError, SourceError
from pipeline.executor import Pipeline
from pipeline.graph import build_graph
from pipeline.io.analytics import AnalyticsSink
from pipeline.io.factory import (
    VIDEO_EXTENSIONS,
    CaptureRequest,
    is_url,
    open_sink,
    open_source,
    plays_in_window,
)
from pipeline.io.network import is_stream_url
from pipeline.io.sinks import EncoderSettings
from pipeline.io.window import WINDOW, WindowSink
from pipeline.model_manager.manager import ModelManager
from pipeline.progress import Progress

log = logging.getLogger("pipeline")

PARTIAL = ".partial"  # inserted before the extension of an output being written
LIST_SUFFIX = ".txt"  # a --source with this suffix lists videos, one path per line
PROGRESS_EVERY_S = 0.25  # s between progress updates


@dataclass(frozen=True)
class JobOptions:
    """Everything about a run except what goes in and where it goes."""

    config: GraphConfig
    device: torch.device
    frames: int | None = None
    realtime: bool = False
    capture: CaptureRequest = field(default_factory=CaptureRequest)
    settings: EncoderSettings = field(default_factory=EncoderSettings)
    analytics: Path | None = None  # JSONL sidecar
    device_profile: DeviceProfile | None = None  # None: detected from the device


@dataclass
class JobResult:
    source: str
    output: str
    status: str  # ok | partial (input damaged, output holds what decoded) | failed | interrupted | skipped
    reason: str | None = None
    report: dict[str, Any] | None = None

    @property
    def succeeded(self) -> bool:
        return self.status in ("ok", "skipped")

    @property
    def frames_out(self) -> int:
        return self.report["frames"]["out"] if self.report else 0

    def summary(self) -> str:
        if self.report is None:
            return f"{self.status}: {self.source}" + (f" ({self.reason})" if self.reason else "")
        report = self.report
        e2e = report["latency_ms"]["end_to_end"]
        dropped = sum(report["frames"]["dropped"].values())
        where = "" if self.output == "null" else f" -> {self.output}"
        quality = report.get("quality", {})
        if quality.get("enabled"):
            where = f", quality {quality['rung']} after {quality['changes']} change(s){where}"
        why = f" ({self.reason})" if self.reason else ""
        word = "done" if self.status == "ok" else self.status
        return (
            f"{word}: {report['frames']['out']} frame(s) in {report['wall_s']:.2f} s "
            f"({report['fps']['out']:.1f} fps), end-to-end p50 {e2e['p50']:.1f} ms p95 {e2e['p95']:.1f} ms "
            f"p99 {e2e['p99']:.1f} ms, dropped {dropped}{where}{why}"
        )


def partial_path(final: Path) -> Path:
    return final.with_name(final.stem + PARTIAL + final.suffix)


def refuse_overwriting_the_source(source_spec: str, output_spec: str, analytics: Path | None = None) -> None:
    """A SourceError when the output (or the analytics file) is the source file itself, by whatever
    path: written under a partial name and renamed at the end, it would replace what it was made
    from. Checked before anything opens; `..`, symbolic links and hard links count as the same file."""
    source = Path(source_spec)
    if not source.is_file():  # a built-in sample, a camera, a URL: nothing on disk to lose
        return
    for flag, spec in (("--output", Path(output_spec)), ("--analytics", analytics)):
        if spec is not None and spec.exists() and source.samefile(spec):
            raise SourceError(f"{flag} {spec}: is the source file {source_spec} itself; write it somewhere else")


async def run_job(
    source_spec: str,
    output_spec: str,
    options: JobOptions,
    *,
    progress: Progress | None = None,
    on_start: Callable[[Pipeline], None] | None = None,
    keep_partial: bool = False,
    models: ModelManager | None = None,
) -> JobResult:
    """Run one source to one output. Bad input is a failed result, not an exception.

    `on_start` gets the pipeline before it runs (to wire Ctrl-C to it). The output of a run that
    was interrupted, or whose input turned out damaged, is finalized and renamed to the final
    name, unless `keep_partial` (folder and cluster runs, where a final name means "complete,
    skip it next time": such an output keeps its partial name, and the next run redoes the file
    and reports it again). `models`: a model manager to share with other runs (a folder's
    files), so models load once.
    """
    is_file = output_spec not in ("null", WINDOW) and not is_stream_url(output_spec)
    if is_file:
        refuse_overwriting_the_source(source_spec, output_spec, options.analytics)
    source = open_source(
        source_spec,
        device=options.device,
        frames=options.frames,
        realtime=options.realtime or plays_in_window(output_spec),
        capture=options.capture,
    )
    final = Path(output_spec) if is_file else None
    writing = partial_path(final) if final is not None else None
    # (final, partial) for each file written: the video and the analytics move together
    files = [(final, writing)] if final is not None and writing is not None else []
    try:
        sink = open_sink(output_spec, settings=options.settings, device=options.device, path=writing)
        if options.analytics is not None:
            analytics_writing = partial_path(options.analytics)
            # renamed before the video: the video's final name is what a folder run takes for done
            files.insert(0, (options.analytics, analytics_writing))
            sink = AnalyticsSink(sink, analytics_writing)
        pipeline = Pipeline(
            build_graph(options.config),
            source,
            sink,
            device=options.device,
            models=models,
            device_profile=options.device_profile,
        )
        window = sink.inner if isinstance(sink, AnalyticsSink) else sink
        if isinstance(window, WindowSink):
            window.on_close = pipeline.request_stop  # closing the window stops the run, as Ctrl-C does
    except BaseException:
        source.close()
        raise
    log.info("running graph %r on %s: %s -> %s", options.config.name, options.device, source_spec, output_spec)
    if on_start is not None:
        on_start(pipeline)
    if progress is not None:
        progress.start_file(source_spec, source.info.frame_count)
    ticker = asyncio.create_task(_tick(pipeline, progress)) if progress is not None else None
    try:
        report = await pipeline.run()
    except (SinkError, PipelineError) as exc:
        for _, partial in files:
            partial.unlink(missing_ok=True)
        return JobResult(source_spec, output_spec, "failed", str(exc))
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        if progress is not None:
            progress.update(pipeline.metrics.frames_out)
            progress.end_file()
    return _settle(source_spec, output_spec, report, pipeline.interrupted, files, keep_partial)


def _settle(
    source_spec: str,
    output_spec: str,
    report: dict[str, Any],
    interrupted: bool,
    files: list[tuple[Path, Path]],
    keep_partial: bool,
) -> JobResult:
    """Name the outcome and put the output files (final, partial) where that outcome says."""
    frames_out = report["frames"]["out"]
    if frames_out == 0 and not interrupted:
        status, reason = "failed", report["source_error"] or "no frames could be decoded"
    elif report["source_error"]:
        status, reason = "partial", report["source_error"]
    elif interrupted:
        status, reason = "interrupted", f"stopped after {frames_out} frame(s)"
    else:
        status, reason = "ok", None
    for final, writing in files:
        if status == "failed":
            writing.unlink(missing_ok=True)
        elif status in ("interrupted", "partial") and keep_partial:
            if final == Path(output_spec):
                output_spec = str(writing)
        elif writing.exists():
            writing.replace(final)
    return JobResult(source_spec, output_spec, status, reason, report)


async def _tick(pipeline: Pipeline, progress: Progress) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        metrics = pipeline.metrics
        status = f"e2e p95 {metrics.end_to_end.percentile_ns(0.95) / 1e6:.0f} ms"
        if pipeline.scheduler is not None:
            status += f", quality {pipeline.scheduler.controller.rung_name}"
        progress.update(metrics.frames_out, status)


# ------------------------------------------------------------------------- folders


@dataclass(frozen=True)
class FolderItem:
    source: Path
    output: Path
    analytics: Path | None

    def skipped(self) -> JobResult:
        """The result of a file left alone because its output is there (a folder run redoes only
        what is missing, unless --overwrite)."""
        return JobResult(str(self.source), str(self.output), "skipped", "output exists (--overwrite redoes it)")


def plan_folder(source_dir: Path, output_dir: Path, *, extension: str, analytics_dir: Path | None) -> list[FolderItem]:
    """Every video in `source_dir` (not recursive), each to `output_dir/<same name><extension>`."""
    if not source_dir.is_dir():
        raise SourceError(f"--source {source_dir}: not a directory")
    if output_dir.resolve() == source_dir.resolve():
        raise SourceError(f"--output {output_dir}: must differ from the source folder (outputs would be re-read)")
    videos = sorted(
        p
        for p in source_dir.iterdir()
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and PARTIAL not in p.suffixes
    )
    if not videos:
        raise SourceError(f"--source {source_dir}: no video files in it (looked for {', '.join(VIDEO_EXTENSIONS)})")
    return _items(videos, output_dir, extension, analytics_dir)


def _items(sources: list[Path], output_dir: Path, extension: str, analytics_dir: Path | None) -> list[FolderItem]:
    """Each source to `output_dir/<its name><extension>`, its analytics to `analytics_dir/<its name>.jsonl`."""
    return [
        FolderItem(
            source=path,
            output=output_dir / (path.stem + extension),
            analytics=analytics_dir / (path.stem + ".jsonl") if analytics_dir is not None else None,
        )
        for path in sources
    ]


async def run_folder(
    items: list[FolderItem],
    options: JobOptions,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    on_start: Callable[[Pipeline], None] | None = None,
    stopped: Callable[[], bool] = lambda: False,
) -> list[JobResult]:
    """Process each item in turn; one bad file does not stop the rest. `stopped()` ends the folder early."""
    results: list[JobResult] = []
    models = ModelManager.for_device(options.device, options.device_profile)  # loaded once for every file
    for item in items:
        if stopped():
            break
        if item.output.exists() and not overwrite:
            results.append(item.skipped())
            if progress is not None:
                progress.end_file()
            continue
        item_options = dataclasses.replace(options, analytics=item.analytics)
        try:
            result = await run_job(
                str(item.source),
                str(item.output),
                item_options,
                progress=progress,
                on_start=on_start,
                keep_partial=True,
                models=models,
            )
        except (SourceError, SinkError) as exc:  # this file's input or output: the rest still run
            result = JobResult(str(item.source), str(item.output), "failed", str(exc))
            if progress is not None:
                progress.end_file()
        results.append(result)
        log.info("%s: %s", item.source.name, result.summary())
    return results


def is_folder_job(source_spec: str) -> bool:
    """A folder of videos, or a list of them (a .txt file, one path per line)."""
    if is_url(source_spec):
        return False
    path = Path(source_spec)
    return path.is_dir() or (path.suffix.lower() == LIST_SUFFIX and path.is_file())


def plan_list(list_file: Path, output_dir: Path, *, extension: str, analytics_dir: Path | None) -> list[FolderItem]:
    """Every video a list file names (one path per line, relative to the list's folder; blank lines
    and lines starting with # skipped), each to `output_dir/<its name><extension>`."""
    base = list_file.parent
    sources = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line) if Path(line).is_absolute() else base / line
        if not path.is_file():
            raise SourceError(f"{list_file} line {number}: {line}: no such file")
        sources.append(path)
    if not sources:
        raise SourceError(f"--source {list_file}: the list names no videos")
    stems = [p.stem for p in sources]
    clash = next((stem for stem in stems if stems.count(stem) > 1), None)
    if clash is not None:
        raise SourceError(f"--source {list_file}: two inputs named {clash!r} would write the same output")
    return _items(sources, output_dir, extension, analytics_dir)


def plan_videos(source_spec: str, output_dir: Path, *, extension: str, analytics_dir: Path | None) -> list[FolderItem]:
    """`plan_folder` for a folder, `plan_list` for a list file."""
    path = Path(source_spec)
    if path.is_dir():
        return plan_folder(path, output_dir, extension=extension, analytics_dir=analytics_dir)
    return plan_list(path, output_dir, extension=extension, analytics_dir=analytics_dir)
