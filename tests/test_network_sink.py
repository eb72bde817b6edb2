"""Streaming out: MPEG-TS over UDP to a listener and RTMP to a server on this machine, and clear errors otherwise."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from pipeline.cli import EXIT_OK, main
from pipeline.errors import SinkError
from pipeline.io.network import NetworkSink, is_stream_url
from pipeline.io.sinks import EncoderSettings

TS_PACKET = 188  # bytes; every MPEG-TS packet starts with the sync byte 0x47


def test_udp_output_delivers_an_mpeg_ts_stream():
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    received: list[bytes] = []
    run_over = threading.Event()

    def listen() -> None:
        # Until the run is over, however long it takes to start; then until the socket is drained.
        while True:
            try:
                received.append(listener.recv(65536))
            except TimeoutError:
                if run_over.is_set():
                    return

    thread = threading.Thread(target=listen)
    thread.start()
    try:
        assert (
            main(["--source", "sample", "--frames", "30", "--output", f"udp://127.0.0.1:{port}?pkt_size=1316"])
            == EXIT_OK
        )
    finally:
        run_over.set()
        thread.join()
        listener.close()
    stream = b"".join(received)
    assert len(stream) > 20 * TS_PACKET
    assert all(len(d) % TS_PACKET == 0 for d in received)
    assert all(stream[i] == 0x47 for i in range(0, len(stream), TS_PACKET))


def test_stream_urls_are_recognised_and_others_refused():
    assert is_stream_url("rtmp://live.example/app/key") and is_stream_url("srt://host:9000")
    assert not is_stream_url("out/video.mp4")
    with pytest.raises(SinkError, match="not a stream URL"):
        NetworkSink("http://example.com/x", settings=EncoderSettings())


def test_live_settings_have_no_lookahead_and_a_two_second_gop():
    from fractions import Fraction

    from pipeline.io.sinks import _video_options

    options = _video_options("libx264", EncoderSettings(), True, Fraction(30))
    assert options["tune"] == "zerolatency" and options["g"] == "60"


def listening(port: int) -> bool:
    """Whether a TCP socket on this machine listens on `port` (Linux: /proc/net/tcp)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]  # noqa: SIM115
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


RTMP_SERVER = """
import json, sys
import av
counts = {"video": 0, "audio": 0}
with av.open(sys.argv[1], options={"listen": "1"}, timeout=30) as server:
    size = [server.streams.video[0].width, server.streams.video[0].height]
    try:
        for packet in server.demux():
            if packet.size:
                counts[packet.stream.type] += 1
    except av.error.OSError:  # the publisher hung up: FFmpeg's server reads that as an I/O error
        pass
print(json.dumps({**counts, "size": size}))
"""


def test_rtmp_output_publishes_video_and_audio_to_a_server():
    """FFmpeg's own RTMP server side, in a process of its own, accepts one publisher: us."""
    if not sys.platform.startswith("linux"):
        pytest.skip("waits for the server through /proc/net/tcp")
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/test"
    server = subprocess.Popen([sys.executable, "-c", RTMP_SERVER, url], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not listening(port) and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.02)
        assert main(["--source", "sample", "--frames", "30", "--output", url]) == EXIT_OK
        out, _ = server.communicate(timeout=30)
    finally:
        server.kill()
    got = json.loads(out)
    assert got["video"] == 30 and got["size"] == [640, 360]
    assert got["audio"] > 0


def test_a_stream_protocol_ffmpeg_lacks_or_a_closed_port_is_one_line(caplog):
    port = free_port()  # nothing listens on it
    assert main(["--source", "sample", "--frames", "5", "--output", f"rtmp://127.0.0.1:{port}/live/x"]) != EXIT_OK
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors[-1] == f"rtmp://127.0.0.1:{port}/live/x: cannot connect (Connection refused)"


def test_srt_without_libsrt_in_ffmpeg_is_one_line_that_says_so(caplog):
    port = free_port()
    url = f"srt://127.0.0.1:{port}"
    assert main(["--source", "sample", "--frames", "5", "--output", url]) != EXIT_OK
    error = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][-1]
    # PyAV's wheels carry no libsrt; an FFmpeg that has it finds nobody listening instead.
    assert error == f"{url}: this FFmpeg build cannot write srt:// (it has no srt protocol)" or error.startswith(
        f"{url}: cannot connect ("
    )
