"""Streaming out to media servers and players: RTMP (OBS, nginx-rtmp, YouTube), UDP and SRT.

The same encoder path as a file, muxed to a live container (FLV for RTMP, MPEG-TS otherwise)
with settings for viewers rather than file size: no lookahead or B-frames, a key frame every
two seconds.
"""

from __future__ import annotations

from urllib.parse import urlparse

from pipeline.errors import SinkError
from pipeline.io.sinks import FileSink

# URL scheme → (container format, video codec, audio codec)
STREAM_FORMATS = {
    "rtmp": ("flv", "libx264", "aac"),
    "rtmps": ("flv", "libx264", "aac"),
    "udp": ("mpegts", "libx264", "aac"),
    "srt": ("mpegts", "libx264", "aac"),
    "rtp": ("rtp_mpegts", "libx264", "aac"),
    "tcp": ("mpegts", "libx264", "aac"),
}


def is_stream_url(spec: str) -> bool:
    return urlparse(spec).scheme in STREAM_FORMATS


class NetworkSink(FileSink):
    """Encodes with low-latency settings and sends the stream to a URL."""

    low_latency = True
    writes_file = False

    def __init__(self, url: str, **kwargs):
        self.scheme = urlparse(url).scheme
        if self.scheme not in STREAM_FORMATS:
            raise SinkError(f"{url}: not a stream URL (use one of {', '.join(s + '://' for s in STREAM_FORMATS)})")
        self.container_format = STREAM_FORMATS[self.scheme][0]
        self.carries_streams = self.container_format != "flv"  # FLV holds one video and one audio stream
        super().__init__(url, **kwargs)

    def _default_codecs(self) -> tuple[str, str]:
        _, video, audio = STREAM_FORMATS[self.scheme]
        if self.device.type == "cuda":
            video = "h264_nvenc"  # falls back to libx264 at open if the GPU refuses it
        return video, audio

    def _check_target(self) -> None:
        pass  # a URL has no directory to check; a refused connection fails at open
