"""The browser's part of bench/webrtc_latency.py, done by an aiortc peer in a process of its own.

For machines without a browser (a lent GPU machine has none): it sends what
bench/webrtc_latency.html draws — a moving colour, a photograph of a face swaying sideways, and
a 20-bit barcode of the time in ms on a grey band — as VP8 over loopback, and reads the barcode
back from every frame that returns. One clock (this process's) stamps and reads, so each reading
is a whole round trip. aiortc's own receive path (its jitter buffer) is on this side for every
row alike, so rows compare with each other, not with the browser's rows.

    samples = measure_in_process(url, 640, 480, sway=40, warmup_s=3, seconds=8)

or on its own: python bench/webrtc_client.py URL [--size 640x480] [--sway 40] [--warmup 3] [--seconds 8],
which prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import colorsys
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FACE = ROOT / "pipeline" / "io" / "assets" / "astronaut.jpg"
BITS = 20
MASK = (1 << BITS) - 1
GREY = 136  # the band around the bars (#888)
# Limited-range luma of white and black bars is about 235 and 16, of the grey band 133: a bar
# reads as 1 above this, as 0 below the next, and anything between means no barcode.
ONE_ABOVE, ZERO_BELOW = 150, 102


def barcode_layout(width: int, height: int) -> tuple[int, int, int, int]:
    """(bar width, bar height, x of the first bar, y of the bars), as the page lays them out."""
    return (width // 32) & ~1, (height // 10) & ~1, (width // 32) & ~1, int(height * 0.42) & ~1


def now_ms() -> int:
    return round(time.monotonic() * 1000)


class StampedCanvas:
    """Pictures as the page's canvas draws them, each carrying the time it was drawn."""

    def __init__(self, width: int, height: int, sway: int):
        self.width, self.height, self.sway = width, height, sway
        with av.open(str(FACE)) as container:
            photo = next(container.decode(video=0))
        side = int(height * 0.45)  # below the barcode, which ends at 52% of the height
        face_w = side * photo.width // photo.height
        self.face = photo.reformat(width=face_w, height=side, format="rgb24").to_ndarray()

    def draw(self, stamp: int) -> np.ndarray:
        width, height = self.width, self.height
        hue = (stamp / 40) % 360 / 360
        colour = np.array(colorsys.hls_to_rgb(hue, 0.45, 0.35)) * 255
        canvas = np.empty((height, width, 3), dtype=np.uint8)
        canvas[:] = colour.astype(np.uint8)
        face_h, face_w = self.face.shape[:2]
        x = round(self.sway * (1 + math.sin(2 * math.pi * stamp / 3000)))
        fit = max(0, min(face_w, width - x))
        canvas[height - face_h :, x : x + fit] = self.face[:, :fit]
        bar_w, bar_h, x0, y0 = barcode_layout(width, height)
        canvas[y0 - 4 : y0 + bar_h + 4, x0 - 4 : x0 + BITS * bar_w + 4] = GREY
        for bit in range(BITS):
            canvas[y0 : y0 + bar_h, x0 + bit * bar_w : x0 + (bit + 1) * bar_w] = 255 if (stamp & MASK) >> bit & 1 else 0
        return canvas


def read_stamp(luma: np.ndarray, width: int, height: int) -> int | None:
    """The time code on a returned picture's luma plane (H×W), or None where there is none."""
    bar_w, bar_h, x0, y0 = barcode_layout(width, height)
    scale_x, scale_y = luma.shape[1] / width, luma.shape[0] / height  # a picture that came back smaller
    row = luma[int((y0 + bar_h // 2) * scale_y)]
    stamp = 0
    for bit in range(BITS):
        value = int(row[int((x0 + bit * bar_w + bar_w // 2) * scale_x)])
        if ZERO_BELOW <= value <= ONE_ABOVE:
            return None
        if value > ONE_ABOVE:
            stamp |= 1 << bit
    return stamp


async def _measure(url: str, width: int, height: int, sway: int, warmup_s: float, seconds: float) -> dict[str, Any]:
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError, VideoStreamTrack

    from pipeline.webrtc.ice import limit_ice_to

    limit_ice_to(["127.0.0.1"])
    canvas = StampedCanvas(width, height, sway)

    class Camera(VideoStreamTrack):
        async def recv(self) -> av.VideoFrame:
            pts, time_base = await self.next_timestamp()
            frame = av.VideoFrame.from_ndarray(canvas.draw(now_ms()), format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            return frame

    samples: list[tuple[float, int]] = []  # (arrival s, round trip ms)
    counts = {"frames": 0, "undecodable": 0}
    received = [0, 0]

    async def read(track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                arrived = now_ms()
                plane = frame.planes[0]  # Y, rows padded to its line size
                luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: frame.height, : frame.width]
                received[:] = [frame.width, frame.height]
                stamp = read_stamp(luma, width, height)
                counts["frames"] += 1
                if stamp is None:
                    counts["undecodable"] += 1
                else:
                    samples.append((time.monotonic(), (arrived - stamp) & MASK))
        except MediaStreamError:
            pass

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    readers: list[asyncio.Task] = []
    pc.on("track", lambda track: readers.append(asyncio.ensure_future(read(track))) if track.kind == "video" else None)
    pc.addTrack(Camera())
    pc.createDataChannel("analytics")
    try:
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
        async with aiohttp.ClientSession() as http, http.post(f"{url}/offer", json=offer) as reply:
            if reply.status != 200:
                raise RuntimeError(f"/offer answered {reply.status}: {await reply.text()}")
            await pc.setRemoteDescription(RTCSessionDescription(**await reply.json()))
        await asyncio.sleep(warmup_s)
        start, frames_at_start = time.monotonic(), counts["frames"]
        await asyncio.sleep(seconds)
        end, frames_at_end = time.monotonic(), counts["frames"]
    finally:
        await pc.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return {
        "latencies_ms": [ms for at, ms in samples if start <= at < end],
        "fps": (frames_at_end - frames_at_start) / (end - start),
        "undecodable": counts["undecodable"],
        "received": f"{received[0]}x{received[1]}",
    }


def measure_in_process(
    url: str, width: int, height: int, *, sway: int, warmup_s: float, seconds: float
) -> dict[str, Any]:
    """One row's round trips, from a peer in a process of its own (blocks: call it off the event loop)."""
    command = [sys.executable, __file__, url, "--size", f"{width}x{height}", "--sway", str(sway)]
    command += ["--warmup", str(warmup_s), "--seconds", str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=warmup_s + seconds + 60, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"aiortc client: exit {done.returncode}: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8080 (its /offer is used)")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--sway", type=int, default=40, help="px the face moves sideways (0: still)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    sys.path.insert(0, str(ROOT))
    print(json.dumps(asyncio.run(_measure(args.url, width, height, args.sway, args.warmup, args.seconds))))


if __name__ == "__main__":
    main()
