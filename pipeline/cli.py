"""The command line: parse, build the graph from config, run it on one input or a folder, report.

Exit codes: 0 done (every file, for a folder); 1 a run failed or its input was damaged (the
output could not be written, a file in a folder failed, an input ended early); 2 bad usage,
source, device or config; 130 stopped by Ctrl-C or SIGTERM (the output is still finalized up
to the last frame written).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from pipeline.config import GraphConfig, IceServerConfig, load_config, with_ice_servers, with_targets
from pipeline.device import resolve_device
from pipeline.device_profiles import load_profile, profile_names
from pipeline.errors import ConfigError, DeviceError, PipelineError, SinkError, SourceError
from pipeline.executor import Pipeline
from pipeline.graph import with_lines_to_say
from pipeline.io.factory import BUILT_IN_SOURCES, CaptureRequest, default_output
from pipeline.io.network import is_stream_url
from pipeline.io.sinks import CONTAINER_CODECS, EncoderSettings
from pipeline.io.window import WINDOW, display_available
from pipeline.job import JobOptions, JobResult, is_folder_job, plan_videos, run_folder, run_job
from pipeline.metrics import write_report
from pipeline.progress import Progress

if TYPE_CHECKING:
    from pipeline.webrtc.tls import Tls

log = logging.getLogger("pipeline")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
SIZE = re.compile(r"^(\d+)x(\d+)$")


def build_parser() -> argparse.ArgumentParser:
    sources = "; ".join(f"'{name}': {text}" for name, text in BUILT_IN_SOURCES.items())
    parser = argparse.ArgumentParser(
        prog="run_pipeline.py",
        description="Run video and audio through a graph of inference stages and write the result.",
        epilog=(
            "examples:\n"
            "  python run_pipeline.py --source sample --output out/sample.mp4 --report out/report.json\n"
            "  python run_pipeline.py --source talk.mkv --output talk.mp4 --analytics talk.jsonl\n"
            "  python run_pipeline.py --source videos/ --output processed/\n"
            "  python run_pipeline.py --source webcam --output udp://127.0.0.1:5000"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--source",
        default="sample",
        help=f"where frames come from: a media file, a folder of them, an http/rtsp URL, or {sources}. Default: sample",
    )
    parser.add_argument(
        "--output",
        help=(
            "a video file (.mp4, .mkv, .mov: H.264 + AAC; .webm: VP9 + Opus), a folder (with a folder --source), "
            "a stream URL (rtmp://, udp://, srt://), 'window' to watch and listen (a file plays at its own pace), "
            "or 'null' to discard. Default: window for a webcam on a desktop, else null"
        ),
    )
    parser.add_argument(
        "--config", default="default", help="graph config: a YAML path or a name in configs/. Default: default"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N. Default: auto (cuda if present)")
    parser.add_argument(
        "--device-profile",
        metavar="NAME",
        help=(
            f"memory plan and limits for the device: {', '.join(profile_names())} (configs/devices/), or a YAML path. "
            "Default: detected from the GPU's name and memory; cpu without a GPU"
        ),
    )
    parser.add_argument("--frames", type=int, metavar="N", help="stop after N frames (all of a file by default)")
    parser.add_argument("--realtime", action="store_true", help="pace a file at its own frame rate, like a live source")
    parser.add_argument("--size", metavar="WxH", help="picture size to ask a webcam for, e.g. 1280x720")
    parser.add_argument("--fps", type=float, metavar="N", help="frame rate to ask a webcam for")
    encoder = parser.add_argument_group("encoder (passed through to the video encoder)")
    encoder.add_argument("--video-codec", metavar="NAME", help="e.g. libx264, libx265, h264_nvenc, libvpx-vp9")
    encoder.add_argument("--crf", type=int, metavar="N", help="constant quality: lower is better and bigger (x264: 23)")
    encoder.add_argument("--bitrate", metavar="RATE", help="target bitrate instead of --crf, e.g. 4M or 800k")
    encoder.add_argument(
        "--preset", metavar="NAME", help="speed preset, e.g. ultrafast … veryslow (x264), p1 … p7 (NVENC)"
    )
    serving = parser.add_argument_group("serving browsers (WebRTC)")
    serving.add_argument(
        "--serve",
        action="store_true",
        help="serve the page and WebRTC sessions instead of running one source: a browser sends its camera and "
        "microphone and gets the processed video, the avatar's voice and live analytics back",
    )
    serving.add_argument("--host", default="127.0.0.1", help="address to listen on. Default: 127.0.0.1 (this machine)")
    serving.add_argument("--port", type=int, default=8080, help="Default: 8080")
    serving.add_argument(
        "--token", help="required on /offer and POSTs when --host is not loopback. Default: generated and printed"
    )
    serving.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="a STUN or TURN server for both ends of every session, so peers behind NAT or on another network "
        "connect (repeatable): stun:HOST[:PORT], turn:HOST[:PORT][?transport=udp|tcp], turns:…; also the "
        "config's webrtc.ice_servers (keeps TURN credentials off the command line). Default: none, direct only",
    )
    serving.add_argument("--ice-username", metavar="NAME", help="the TURN servers' username")
    serving.add_argument("--ice-credential", metavar="SECRET", help="the TURN servers' credential (password)")
    serving.add_argument(
        "--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (its chain after it) and --tls-key"
    )
    serving.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    serving.add_argument(
        "--tls-self-signed",
        action="store_true",
        help="serve HTTPS with a certificate made for this run (its fingerprint is printed to check against the "
        "browser's warning). A browser gives a page its camera only on https:// or localhost",
    )
    serving.add_argument(
        "--max-sessions", type=int, default=4, metavar="N", help="sessions at once (with --ray: per worker). Default: 4"
    )
    serving.add_argument(
        "--ray-workers",
        type=int,
        metavar="N",
        help="with --serve --ray: session worker actors to start (each owns its models and sessions). "
        "Default: one per GPU in the cluster, or 2 without GPUs",
    )
    scheduling = parser.add_argument_group("latency and quality (the frame scheduler)")
    scheduling.add_argument(
        "--quality",
        choices=["live", "auto", "off"],
        help=(
            "live: hold the latency target on live and --realtime runs (drop late frames, lower quality under load, "
            "climb back when there is room) and leave files untouched; auto: lower quality on files too (never "
            "dropping a frame); off: never. Default: the config's quality.mode (live)"
        ),
    )
    scheduling.add_argument(
        "--latency-ms", type=float, metavar="MS", help="end-to-end latency budget, capture to output. Default: 50"
    )
    scheduling.add_argument(
        "--target-fps", type=float, metavar="N", help="a live source faster than this is thinned to it. Default: 120"
    )
    parser.add_argument(
        "--analytics", metavar="PATH", help="write one JSON line per frame (a folder of .jsonl files for a folder run)"
    )
    parser.add_argument(
        "--say",
        action="append",
        default=[],
        metavar="TEXT",
        help="a line for the avatar to speak (repeatable; needs a voice stage in the graph and eSpeak NG)",
    )
    parser.add_argument("--overwrite", action="store_true", help="folder runs: redo outputs that already exist")
    parser.add_argument(
        "--ray",
        metavar="auto|ADDRESS",
        help=(
            "folder and list runs: one Ray task per file across a cluster (auto: the cluster running here, else a "
            "local one; or its address, e.g. ray://head:10001). Inputs and outputs must be on a path every worker "
            "sees. With --serve: sessions are placed on Ray worker actors"
        ),
    )
    parser.add_argument(
        "--ray-cpus",
        type=float,
        default=1.0,
        metavar="N",
        help="with --ray (folder and list runs): CPUs each file's task takes, and the cores its stages share. "
        "On a GPU each task also takes the share of a card its device profile gives one file. Default: 1",
    )
    parser.add_argument("--report", metavar="PATH", help="write the run report (JSON): latency, fps, drops, stages")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="Default: info"
    )
    return parser


def job_options(args: argparse.Namespace) -> JobOptions:
    device = resolve_device(args.device)
    config = load_config(args.config)
    if args.say:
        config = with_lines_to_say(config, args.say)
    config = with_targets(config, quality=args.quality, latency_ms=args.latency_ms, fps=args.target_fps)
    size = None
    if args.size:
        match = SIZE.match(args.size)
        if not match:
            raise SourceError(f"--size {args.size}: expected WIDTHxHEIGHT, e.g. 1280x720")
        size = (int(match.group(1)), int(match.group(2)))
    if args.fps is not None and args.fps <= 0:
        raise SourceError(f"--fps {args.fps}: must be > 0")
    settings = EncoderSettings(
        video_codec=args.video_codec, crf=args.crf, bitrate=_bitrate(args.bitrate), preset=args.preset
    )
    return JobOptions(
        config=config,
        device=device,
        device_profile=load_profile(args.device_profile) if args.device_profile else None,
        frames=args.frames,
        realtime=args.realtime,
        capture=CaptureRequest(size=size, fps=args.fps),
        settings=settings,
        analytics=Path(args.analytics) if args.analytics else None,
    )


def _bitrate(text: str | None) -> int | None:
    if text is None:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", text.strip())
    if not match:
        raise SinkError(f"--bitrate {text}: expected bits per second, e.g. 4M, 800k or 2500000")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


class _Stopper:
    """Ctrl-C / SIGTERM: the first asks the running pipeline to drain, the second aborts it."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.requested = False
        self.on_request: Callable[[], None] | None = None  # serving: stop the server

    def attach(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        if self.requested:
            pipeline.request_stop()

    def __call__(self) -> None:
        self.requested = True
        if self.on_request is not None:
            self.on_request()
        if self.pipeline is not None:
            self.pipeline.request_stop()


def check_serving_flags(args: argparse.Namespace) -> None:
    """A flag for serving without --serve is a mistake worth a word, not something to ignore."""
    asked = [flag for flag, given in SERVING_ONLY.items() if getattr(args, given)]
    if asked and not args.serve:
        raise ConfigError(f"{asked[0]}: only with --serve")


async def run(args: argparse.Namespace) -> int:
    check_serving_flags(args)
    options = job_options(args)
    stopper = _Stopper()
    loop = asyncio.get_running_loop()
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    for sig in stop_signals:
        loop.add_signal_handler(sig, stopper)
    if args.ray and not args.serve and not is_folder_job(args.source):
        raise SourceError(f"--ray: needs a folder or a list (.txt) as --source, not {args.source}")
    try:
        if args.serve:
            return await _serve(args, options, stopper)
        if is_folder_job(args.source):
            return await _run_folder(args, options, stopper)
        return await _run_single(args, options, stopper)
    finally:
        for sig in stop_signals:
            loop.remove_signal_handler(sig)


def serving_options(args: argparse.Namespace, config: GraphConfig) -> tuple[GraphConfig, Tls | None]:
    """The config with --ice-server's servers added, and the TLS set-up --tls-* ask for; a
    ConfigError for a flag that needs another beside it."""
    if (args.ice_username or args.ice_credential) and not any(url.startswith("turn") for url in args.ice_server):
        raise ConfigError("--ice-username/--ice-credential: for a TURN server given with --ice-server turn:…")
    relays = [url for url in args.ice_server if url.startswith("turn")]
    if relays and not (args.ice_username and args.ice_credential):
        raise ConfigError(f"--ice-server {relays[0]}: a TURN server needs --ice-username and --ice-credential")
    if args.ice_server:
        try:
            servers = [
                IceServerConfig(urls=[url], username=args.ice_username, credential=args.ice_credential)
                if url.startswith("turn")
                else IceServerConfig(urls=[url])
                for url in args.ice_server
            ]
        except ValidationError as exc:
            raise ConfigError(f"--ice-server: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        config = with_ice_servers(config, servers)
    if args.tls_self_signed and (args.tls_cert or args.tls_key):
        raise ConfigError("--tls-self-signed: or --tls-cert and --tls-key, not both")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key: give both")
    if not (args.tls_cert or args.tls_self_signed):
        return config, None
    from pipeline.webrtc import tls

    return config, tls.from_files(args.tls_cert, args.tls_key) if args.tls_cert else tls.self_signed(args.host)


SERVING_ONLY = {
    "--ice-server": "ice_server",
    "--ice-username": "ice_username",
    "--ice-credential": "ice_credential",
    "--tls-cert": "tls_cert",
    "--tls-key": "tls_key",
    "--tls-self-signed": "tls_self_signed",
}


async def _serve(args: argparse.Namespace, options: JobOptions, stopper: _Stopper) -> int:
    from pipeline.webrtc.server import Server, is_loopback, serve

    config, tls = serving_options(args, options.config)
    try:
        placer = None
        if args.ray:
            from pipeline.cluster.folder_runs import connect
            from pipeline.cluster.live import RayPlacer

            gpus = int(connect(args.ray).get("GPU", 0))
            placer = RayPlacer(
                config,
                workers=args.ray_workers or gpus or 2,
                capacity=args.max_sessions,
                device="cuda" if gpus else "cpu",
                address=args.ray,
                ice_addresses=["127.0.0.1"] if is_loopback(args.host) else None,
            )
        server = Server(
            config,
            device=options.device,
            host=args.host,
            port=args.port,
            token=args.token,
            max_sessions=args.max_sessions,
            profile=options.device_profile,
            placer=placer,
            tls=tls,
        )
    except ConnectionError as exc:  # the Ray cluster (a ClusterUnreachable names the address)
        raise SourceError(str(exc)) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    stop = asyncio.Event()
    stopper.on_request = stop.set
    try:
        await serve(server, stop)
    except OSError as exc:
        raise SinkError(f"--serve: cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None
    return EXIT_OK


async def _run_single(args: argparse.Namespace, options: JobOptions, stopper: _Stopper) -> int:
    progress = Progress()
    try:
        result = await run_job(args.source, args.output, options, progress=progress, on_start=stopper.attach)
    finally:
        progress.close()
    if result.report is not None and args.report:
        write_report(result.report, args.report)
    if result.status == "failed":
        log.error("%s", result.reason)
        return EXIT_FAILED
    log.info("%s", result.summary())
    if result.status == "partial":
        log.warning("%s: input damaged: %s", args.source, result.reason)
        return EXIT_FAILED
    return EXIT_INTERRUPTED if result.status == "interrupted" else EXIT_OK


async def _run_folder(args: argparse.Namespace, options: JobOptions, stopper: _Stopper) -> int:
    if args.output in ("null", WINDOW) or is_stream_url(args.output):
        raise SinkError(f"--output {args.output}: a folder --source needs a folder --output")
    output_dir = Path(args.output)
    extension = output_dir.suffix.lower() if output_dir.suffix.lower() in CONTAINER_CODECS else ".mp4"
    if output_dir.suffix and extension == output_dir.suffix.lower():
        raise SinkError(f"--output {args.output}: a folder --source needs a folder --output, not a file")
    analytics_dir = options.analytics
    items = plan_videos(args.source, output_dir, extension=extension, analytics_dir=analytics_dir)
    log.info("%d video(s) in %s -> %s", len(items), args.source, output_dir)
    if args.ray:
        return await _run_on_ray(args, options, items, stopper)
    progress = Progress(files=len(items))
    try:
        results = await run_folder(
            items,
            options,
            overwrite=args.overwrite,
            progress=progress,
            on_start=stopper.attach,
            stopped=lambda: stopper.requested,
        )
    finally:
        progress.close()
    if args.report:
        write_report(_folder_report(results), args.report)
    return _folder_exit(results, len(items), stopper.requested)


async def _run_on_ray(args: argparse.Namespace, options: JobOptions, items: list, stopper: _Stopper) -> int:
    """The folder over a Ray cluster, waited for off the event loop so Ctrl-C and SIGTERM still stop it."""
    from pipeline.cluster.folder_runs import ClusterProgress, connect, run_on_ray

    if args.ray_cpus <= 0:
        raise ConfigError(f"--ray-cpus {args.ray_cpus:g}: must be > 0")
    try:
        connect(args.ray)  # here, on the main thread: Ray's init touches the signal handlers
    except ConnectionError as exc:
        raise SourceError(str(exc)) from None
    progress = ClusterProgress(len(items))
    try:
        results = await asyncio.to_thread(
            run_on_ray,
            items,
            options,
            address=args.ray,
            overwrite=args.overwrite,
            cpus_per_file=args.ray_cpus,
            progress=progress,
            stopped=lambda: stopper.requested,
        )
    finally:
        progress.close()
    if args.report:
        write_report(_folder_report(results), args.report)
    return _folder_exit(results, len(items), stopper.requested)


def _folder_report(results: list[JobResult]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    return {
        "files": [
            {"source": r.source, "output": r.output, "status": r.status, "reason": r.reason, "report": r.report}
            for r in results
        ],
        "counts": counts,
        "frames_out": sum(r.frames_out for r in results),
    }


def _folder_exit(results: list[JobResult], planned: int, interrupted: bool) -> int:
    failures = [r for r in results if not r.succeeded and r.status != "interrupted"]
    done = sum(1 for r in results if r.status == "ok")
    skipped = sum(1 for r in results if r.status == "skipped")
    log.info("folder: %d of %d done, %d skipped, %d failed", done, planned, skipped, len(failures))
    for result in failures:
        log.error("failed: %s: %s", result.source, result.reason)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if failures else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.output is None:
        args.output = default_output(args.source, display=display_available())
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        return asyncio.run(run(args))
    except (ConfigError, DeviceError, SourceError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except PipelineError as exc:  # SinkError included: the output could not be written
        log.error("%s", exc)
        return EXIT_FAILED
