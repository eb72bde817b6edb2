"""From what the user typed (`--source`, `--output`) to a source or sink object."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from pipeline.errors import SinkError, SourceError
from pipeline.io.base import Sink, Source
from pipeline.io.media import MediaSource
from pipeline.io.network import NetworkSink, is_stream_url
from pipeline.io.sinks import EncoderSettings, FileSink, NullSink
from pipeline.io.synthetic import sample_source, test_source
from pipeline.io.window import WINDOW, WindowSink

BUILT_IN_SOURCES = {
    "sample": "a 10 s built-in clip (a real face, panning, and a beeping tone), processed as fast as it can go",
    "testsrc": "an endless live test signal paced at 30 fps, for benchmarks; stop it with --frames or Ctrl-C",
    "webcam[:N]": "camera N (default 0) of this machine, live",
}
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".ts", ".m2ts", ".mts", ".avi", ".flv", ".m4v", ".mpg", ".mpeg")
URL_SCHEMES = ("http", "https", "rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "tcp", "file")
WEBCAM = re.compile(r"^webcam(?::(\w+))?$")


@dataclass(frozen=True, slots=True)
class CaptureRequest:
    """What to ask a camera for; None: its default."""

    size: tuple[int, int] | None = None  # (width, height) px
    fps: float | None = None


def is_url(spec: str) -> bool:
    return urlparse(spec).scheme in URL_SCHEMES


def open_source(
    spec: str,
    *,
    device: torch.device,
    frames: int | None = None,
    realtime: bool = False,
    capture: CaptureRequest | None = None,
) -> Source:
    """A source for `--source`: a built-in name, webcam[:N], a media file or a URL."""
    if frames is not None and frames < 1:
        raise SourceError(f"--frames {frames}: must be at least 1")
    overrides: dict[str, Any] = {"device": device}
    if frames is not None:
        overrides["frames"] = frames
    if spec == "sample":
        if realtime:
            overrides["live"] = True
        return sample_source(**overrides)
    if spec == "testsrc":
        return test_source(**overrides)
    webcam = WEBCAM.match(spec)
    if webcam:
        return open_webcam(webcam.group(1) or "0", capture or CaptureRequest(), device=device, frames=frames)
    if not is_url(spec):
        path = Path(spec)
        if not path.exists():
            raise SourceError(f"--source {spec}: no such file or directory")
        if path.is_dir():
            raise SourceError(f"--source {spec}: is a directory (a folder needs --output to be a folder too)")
        if path.stat().st_size == 0:
            raise SourceError(f"{spec}: the file is empty (0 bytes)")
    return MediaSource(spec, realtime=realtime, device=device, frames=frames)


def open_webcam(which: str, request: CaptureRequest, *, device: torch.device, frames: int | None) -> MediaSource:
    """The platform's capture device `which` (an index, or a name on Windows) through FFmpeg."""
    options: dict[str, str] = {}
    if request.size:
        options["video_size"] = f"{request.size[0]}x{request.size[1]}"
    if request.fps:
        options["framerate"] = f"{request.fps:g}"
    if sys.platform.startswith("linux"):
        url, fmt = (f"/dev/video{which}" if which.isdigit() else which), "v4l2"
        if not Path(url).exists():
            raise SourceError(f"webcam: no camera at {url} (is one plugged in, and may this user open it?)")
    elif sys.platform == "darwin":
        url, fmt = which, "avfoundation"
    elif sys.platform == "win32":
        url, fmt = f"video={which}", "dshow"
    else:
        raise SourceError(f"webcam: no capture support on {sys.platform}")
    try:
        return MediaSource(
            url,
            container_format=fmt,
            options=options,
            capture=True,
            device=device,
            frames=frames,
            label=f"webcam {url}",
        )
    except SourceError as exc:
        raise SourceError(f"webcam: cannot open {url} ({exc})") from None


def default_output(source_spec: str, *, display: bool) -> str:
    """What `--output` means when it is not given: a window for a webcam on a desktop, else nothing."""
    return WINDOW if display and WEBCAM.match(source_spec) else "null"


def plays_in_window(output_spec: str) -> bool:
    """A window shows a file at its own pace, as a player would, not as fast as it decodes."""
    return output_spec == WINDOW


def open_sink(spec: str, *, settings: EncoderSettings, device: torch.device, path: Path | None = None) -> Sink:
    """A sink for `--output`: null, window, a stream URL, or a file (written at `path` if given)."""
    if spec == "null":
        return NullSink()
    if spec == WINDOW:
        return WindowSink()
    if is_stream_url(spec):
        return NetworkSink(spec, settings=settings, device=device)
    target = path or Path(spec)
    sink = FileSink(target, settings=settings, device=device)  # checks the extension before anything is made
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(f"{spec}: cannot create directory {target.parent} ({exc.strerror})") from None
    return sink
