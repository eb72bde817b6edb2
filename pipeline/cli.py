"""The command line: parse, build the graph from config, run it, report.

Exit codes: 0 done; 1 the run failed (the output could not be opened or written, an internal
error); 2 bad usage, source, device or config; 130 stopped by Ctrl-C or SIGTERM (the output
is still finalized up to the last frame written).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from pipeline.config import load_config
from pipeline.device import resolve_device
from pipeline.errors import ConfigError, DeviceError, PipelineError, SinkError, SourceError
from pipeline.executor import Pipeline
from pipeline.graph import build_graph
from pipeline.io.base import Sink, Source
from pipeline.io.sinks import FileSink, NullSink
from pipeline.io.synthetic import sample_source, test_source
from pipeline.metrics import write_report

log = logging.getLogger("pipeline")

BUILT_IN_SOURCES = {
    "sample": "a 10 s built-in clip (moving test card and a beeping tone), processed as fast as it can go",
    "testsrc": "an endless live test signal paced at 30 fps, for benchmarks; stop it with --frames or Ctrl-C",
}
PROGRESS_EVERY_S = 2.0  # seconds between progress lines
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    sources = "; ".join(f"'{name}': {text}" for name, text in BUILT_IN_SOURCES.items())
    parser = argparse.ArgumentParser(
        prog="run_pipeline.py",
        description="Run video and audio through a graph of inference stages and write the result.",
        epilog="example: python run_pipeline.py --source sample --output out/sample.mp4 --report out/report.json",
    )
    parser.add_argument("--source", default="sample", help=f"where frames come from. {sources}. Default: sample")
    parser.add_argument(
        "--output",
        default="null",
        help="a video file (.mp4, .mkv, .mov: H.264 + AAC; .webm: VP9 + Opus), or 'null' to discard. Default: null",
    )
    parser.add_argument(
        "--config", default="default", help="graph config: a YAML path or a name in configs/. Default: default"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N. Default: auto (cuda if present)")
    parser.add_argument("--frames", type=int, metavar="N", help="stop after N frames (all of a file by default)")
    parser.add_argument("--report", metavar="PATH", help="write the run report (JSON): latency, fps, drops, stages")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="Default: info"
    )
    return parser


def make_source(spec: str, frames: int | None, device: Any) -> Source:
    if frames is not None and frames < 1:
        raise SourceError(f"--frames {frames}: must be at least 1")
    overrides: dict[str, Any] = {"device": device}
    if frames is not None:
        overrides["frames"] = frames
    if spec == "sample":
        return sample_source(**overrides)
    if spec == "testsrc":
        return test_source(**overrides)
    known = ", ".join(BUILT_IN_SOURCES)
    raise SourceError(f"--source {spec!r}: not a source this build can open (built-in sources: {known})")


def make_sink(spec: str) -> Sink:
    if spec == "null":
        return NullSink()
    path = Path(spec)
    sink = FileSink(path)  # checks the extension before anything is created
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(f"{path}: cannot create directory {path.parent} ({exc.strerror})") from None
    return sink


def summary_line(report: dict[str, Any], output: str) -> str:
    frames, fps = report["frames"], report["fps"]
    e2e = report["latency_ms"]["end_to_end"]
    dropped = sum(frames["dropped"].values())
    where = "" if output == "null" else f" -> {output}"
    return (
        f"done: {frames['out']} frame(s) in {report['wall_s']:.2f} s ({fps['out']:.1f} fps), "
        f"end-to-end p50 {e2e['p50']:.1f} ms p95 {e2e['p95']:.1f} ms p99 {e2e['p99']:.1f} ms, "
        f"dropped {dropped}{where}"
    )


async def _progress(pipeline: Pipeline) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        metrics = pipeline.metrics
        e2e = metrics.end_to_end
        log.info(
            "progress: %d frame(s) out, end-to-end p95 %.1f ms, dropped %d",
            metrics.frames_out,
            e2e.percentile_ns(0.95) / 1e6,
            sum(metrics.drops.values()),
        )


async def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    graph = build_graph(load_config(args.config))
    source = make_source(args.source, args.frames, device)
    sink = make_sink(args.output)
    pipeline = Pipeline(graph, source, sink, device=device)
    loop = asyncio.get_running_loop()
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    for sig in stop_signals:
        loop.add_signal_handler(sig, pipeline.request_stop)
    log.info("running graph %r on %s: %s -> %s", graph.config.name, device, args.source, args.output)
    progress = asyncio.create_task(_progress(pipeline))
    try:
        report = await pipeline.run()
    finally:
        progress.cancel()
        for sig in stop_signals:
            loop.remove_signal_handler(sig)
    if args.report:
        write_report(report, args.report)
    log.info("%s", summary_line(report, args.output))
    if report["source_error"]:
        log.warning("source ended early: %s", report["source_error"])
    return EXIT_INTERRUPTED if pipeline.interrupted else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        return asyncio.run(run(args))
    except (ConfigError, DeviceError, SourceError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except PipelineError as exc:  # SinkError included: the output could not be written
        log.error("%s", exc)
        return EXIT_FAILED
