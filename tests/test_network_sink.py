"""Streaming out: an MPEG-TS stream over UDP that a listener on this machine receives."""

from __future__ import annotations

import socket
import threading

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

    def listen() -> None:
        while True:
            try:
                received.append(listener.recv(65536))
            except TimeoutError:
                return

    thread = threading.Thread(target=listen)
    thread.start()
    try:
        assert (
            main(["--source", "sample", "--frames", "30", "--output", f"udp://127.0.0.1:{port}?pkt_size=1316"])
            == EXIT_OK
        )
    finally:
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
