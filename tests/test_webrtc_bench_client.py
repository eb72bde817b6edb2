"""The aiortc peer of bench/webrtc_latency.py: the time code it draws survives a real VP8 round trip."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import av
import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "webrtc_client.py"


@pytest.fixture(scope="module")
def client():
    spec = importlib.util.spec_from_file_location("webrtc_client", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["webrtc_client"] = module
    spec.loader.exec_module(module)
    return module


def vp8_round_trip(pictures: list[np.ndarray]) -> list[av.VideoFrame]:
    height, width = pictures[0].shape[:2]
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.bit_rate, encoder.options = 1_000_000, {"deadline": "realtime", "lag-in-frames": "0"}
    decoder = av.CodecContext.create("libvpx", "r")
    decoded = []
    for index, picture in enumerate([*pictures, None]):
        frame = None
        if picture is not None:
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
            frame.pts = index
        for packet in encoder.encode(frame):
            decoded += decoder.decode(packet)
    return decoded


@pytest.mark.parametrize(("width", "height"), [(640, 480), (320, 240)])
def test_the_time_code_reads_back_after_vp8_with_the_face_swaying(client, width, height):
    canvas = client.StampedCanvas(width, height, sway=40)
    stamps = [123_456 + 33 * i for i in range(12)]  # a face moving, a colour changing, as a run draws them
    returned = vp8_round_trip([canvas.draw(stamp) for stamp in stamps])
    assert len(returned) == len(stamps)
    read = []
    for frame in returned:
        plane = frame.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: frame.height, : frame.width]
        read.append(client.read_stamp(luma, width, height))
    assert read == [stamp & client.MASK for stamp in stamps]


def test_a_picture_without_the_barcode_reads_as_none(client):
    grey = np.full((480, 640), 133, dtype=np.uint8)  # the band's grey where the bars should be
    assert client.read_stamp(grey, 640, 480) is None


def test_the_webrtc_bench_runs_with_the_aiortc_peer_and_ends_with_its_json_line():
    """Every row comes back with readable time codes: a machine without a browser can run the bench."""
    import json
    import subprocess

    root = BENCH.parent.parent
    proc = subprocess.run(
        [sys.executable, str(root / "bench" / "webrtc_latency.py"), "--client", "aiortc", "--sizes", "320x240",
         "--seconds", "1", "--warmup", "1"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["client"] == "aiortc" and figures["size"] == "320x240" and figures["full_received"] == "320x240"
    for row in ("relay", "passthrough", "full", "passthrough_stock_receive", "full_budget_50ms"):
        assert 0 < figures[f"{row}_median_ms"] < 2000, row
    assert figures["fps"] > 5
