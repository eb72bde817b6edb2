#!/usr/bin/env python3
"""Glass-to-glass latency through WebRTC: a plain aiortc relay, our empty graph, our full graph.

Headless Chromium (Debian's, driven by Playwright) sends a canvas whose pixels carry the time
they were drawn (a 20-bit barcode of the page's clock, bench/webrtc_latency.html) and reads the
time back from every frame it receives, so one clock measures the whole round trip: canvas →
encode → network → the server's receive path and work → encode → network → decode → video.
Three servers answer in turn, in the same run and browser:

- relay: a plain aiortc server written as aiortc's example server is (the received track sent
  back through `MediaRelay`), aiortc's receive path unchanged;
- passthrough: our server with an empty graph (configs/passthrough.yaml);
- full: our server with the default graph (emotion, voice, avatar, context, meters);
- passthrough, stock receive: the empty graph again with aiortc's own jitter buffer, to show
  what releasing each frame on its last packet (pipeline/webrtc/receive.py) saves;
- full, 50 ms budget: the default graph as a server runs it, with the scheduler holding its
  latency budget (the rows above set a budget out of reach, to measure what the graph costs):
  what a user gets when the machine cannot keep up, latency held and frames given up.

At 640×480 and 1280×720: median and p95 of the round trip and received fps, over `--seconds`
after `--warmup`. Targets: passthrough's median below the relay's; full at most 15 ms above
passthrough's. The last line is one JSON object for 640×480.

The face sways sideways by `--sway` px (default 40, over a 3 s period), as a person in front of a
camera does: the avatar then follows it with its eyes and is drawn anew on most frames. With
`--sway 0` it sits still, and once the avatar has settled its drawing is kept from frame to frame.
Each full row reports the share of frames on which the avatar was drawn anew.

    python bench/webrtc_latency.py [--seconds 8] [--warmup 3] [--sizes 640x480,1280x720] [--sway 40]
                                   [--client chromium|aiortc] [--device auto|cpu|cuda]

Needs Debian's Chromium (apt install chromium) and the dev extra (playwright).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config, with_targets  # noqa: E402
from pipeline.device import resolve_device  # noqa: E402
from pipeline.webrtc.ice import limit_ice_to  # noqa: E402
from pipeline.webrtc.server import Server  # noqa: E402

PAGE = Path(__file__).resolve().parent / "webrtc_latency.html"
FACE = ROOT / "pipeline" / "io" / "assets" / "astronaut.jpg"  # drawn into the canvas: the full graph reads a face
JSON_SIZE = (640, 480)  # the size the last line (one JSON object) reports
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--allow-loopback-in-peer-connection",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling",
]


async def bench_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(PAGE)


async def bench_face(request: web.Request) -> web.FileResponse:
    return web.FileResponse(FACE)


BENCH_ROUTES = [web.get("/bench", bench_page), web.get("/bench/face.jpg", bench_face)]


class Relay:
    """aiortc's example server, reduced to what matters here: send the received video back."""

    def __init__(self) -> None:
        from aiortc.contrib.media import MediaRelay

        self.relay = MediaRelay()
        self.pcs: set = set()
        self.app = web.Application()
        self.app.add_routes([*BENCH_ROUTES, web.post("/offer", self.offer)])
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def offer(self, request: web.Request) -> web.Response:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        params = await request.json()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pcs.add(pc)

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "video":
                pc.addTrack(self.relay.subscribe(track))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=params["sdp"], type=params["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        await asyncio.gather(*(pc.close() for pc in self.pcs))
        if self._runner is not None:
            await self._runner.cleanup()


class Ours:
    device = torch.device("cpu")  # where our server's graphs run (--device)

    def __init__(self, config_name: str, *, prompt_receive: bool = True, budget_ms: float = 10_000) -> None:
        # By default a budget out of reach: the scheduler must not lower quality or drop frames;
        # this measures what the graph costs, not how the scheduler would trade it away.
        config = with_targets(load_config(config_name), latency_ms=budget_ms)
        self.server = Server(config, device=self.device, port=0, prompt_receive=prompt_receive)
        self.server.app.add_routes(BENCH_ROUTES)

    async def start(self) -> None:
        await self.server.start()
        self.url = self.server.url

    async def stop(self) -> None:
        await self.server.stop()

    def session(self) -> dict:
        """The running session's status: each stage's time per frame, the quality rung."""
        sessions = self.server.performance()["sessions"]
        return sessions[0] if sessions else {}

    def avatar_redrawn(self) -> float | None:
        """The share of frames on which the session's avatar was drawn anew (None: no avatar)."""
        for session in self.server.sessions:
            for avatar in session.pipeline.stages_of("avatar") if session.pipeline is not None else []:
                sprites = avatar.sprites
                return sprites.drawn / max(1, sprites.drawn + sprites.reused)
        return None


async def measure(browser, target, width: int, height: int, warmup_s: float, seconds: float, sway: int) -> dict:
    """One row: `browser` is a Playwright browser, or None for the aiortc peer (bench/webrtc_client.py)."""
    if browser is None:
        return await measure_with_aiortc(target, width, height, warmup_s, seconds, sway)
    await target.start()
    page = await browser.new_page()
    try:
        await page.goto(f"{target.url}/bench?w={width}&h={height}&sway={sway}")
        await page.wait_for_function("window.results.state !== 'starting'", timeout=20_000)
        state = await page.evaluate("window.results.state")
        if state != "connected":
            raise RuntimeError(state)
        await asyncio.sleep(warmup_s)
        start = await page.evaluate("[performance.now(), window.results.frames]")
        await asyncio.sleep(seconds)
        results = await page.evaluate("window.results")
        end = await page.evaluate("[performance.now(), window.results.frames]")
        # What came back may be smaller than what was sent (the server's or the encoder's scaling).
        received = await page.evaluate(
            "[document.getElementById('back').videoWidth, document.getElementById('back').videoHeight]"
        )
        session = target.session() if isinstance(target, Ours) else {}
        stages = {name: s["p50"] for name, s in session.get("stages_ms", {}).items()}
        redrawn = target.avatar_redrawn() if isinstance(target, Ours) else None
    finally:
        await page.close()
        await target.stop()
    latencies = [ms for t, ms in results["samples"] if t >= start[0]]
    if not latencies:
        raise RuntimeError("no frame came back with a readable time code")
    return {
        "median_ms": float(np.median(latencies)),
        "p95_ms": float(np.percentile(latencies, 95)),
        "fps": (end[1] - start[1]) / ((end[0] - start[0]) / 1000),
        "frames": len(latencies),
        "undecodable": results["undecodable"],
        "received": f"{received[0]}x{received[1]}",
        "stages_p50_ms": stages,
        "server_p50_ms": session.get("e2e_p50_ms"),
        "avatar_redrawn": redrawn,
        "rung": session.get("rung"),
        "dropped": session.get("dropped", {}),
    }


async def measure_with_aiortc(target, width: int, height: int, warmup_s: float, seconds: float, sway: int) -> dict:
    """One row with the aiortc peer in a process of its own instead of a browser."""
    from webrtc_client import measure_in_process

    await target.start()
    session: dict = {}
    redrawn = None
    try:
        running = asyncio.get_running_loop().run_in_executor(
            None,
            functools.partial(
                measure_in_process, target.url, width, height, sway=sway, warmup_s=warmup_s, seconds=seconds
            ),
        )
        while not running.done():  # the session ends with the peer: read its status while it lasts
            if isinstance(target, Ours) and target.session():
                session, redrawn = target.session(), target.avatar_redrawn()
            await asyncio.wait([running], timeout=0.25)
        client = running.result()
    finally:
        await target.stop()
    latencies = client["latencies_ms"]
    if not latencies:
        raise RuntimeError("no frame came back with a readable time code")
    return {
        "median_ms": float(np.median(latencies)),
        "p95_ms": float(np.percentile(latencies, 95)),
        "fps": client["fps"],
        "frames": len(latencies),
        "undecodable": client["undecodable"],
        "received": client["received"],
        "stages_p50_ms": {name: s["p50"] for name, s in session.get("stages_ms", {}).items()},
        "server_p50_ms": session.get("e2e_p50_ms"),
        "avatar_redrawn": redrawn,
        "rung": session.get("rung"),
        "dropped": session.get("dropped", {}),
    }


async def run(args: argparse.Namespace) -> dict:
    limit_ice_to(["127.0.0.1"])
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    results: dict = {}
    async with contextlib.AsyncExitStack() as stack:
        browser = None  # the aiortc peer
        if args.client == "chromium":
            from playwright.async_api import async_playwright

            driver = await stack.enter_async_context(async_playwright())
            browser = await driver.chromium.launch(executable_path=args.chromium, headless=True, args=FLAGS)
            stack.push_async_callback(browser.close)
        for width, height in sizes:
            targets = (
                ("relay", Relay),
                ("passthrough", lambda: Ours("passthrough")),
                ("full", lambda: Ours("default")),
                # Ours again with aiortc's receive path as it is: what the prompt jitter buffer saves.
                ("passthrough, stock receive", lambda: Ours("passthrough", prompt_receive=False)),
                ("full, 50 ms budget", lambda: Ours("default", budget_ms=50)),
            )
            for name, make in targets:
                results[(name, width, height)] = await measure(
                    browser, make(), width, height, args.warmup, args.seconds, args.sway
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--sizes", default="640x480,1280x720")
    parser.add_argument("--sway", type=int, default=40, help="px the face moves sideways (0: still)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument(
        "--client",
        choices=["chromium", "aiortc"],
        default="chromium",
        help="who sends and reads the stamped video: headless Chromium, or an aiortc peer in its own "
        "process (for machines without a browser; its rows compare with each other, not with Chromium's)",
    )
    parser.add_argument(
        "--device", default="auto", help="where our server's graphs run: auto (cuda if present), cpu or cuda"
    )
    args = parser.parse_args()
    Ours.device = resolve_device(args.device)
    logging.basicConfig(level=logging.WARNING)
    if args.client == "chromium" and not Path(args.chromium).exists():
        sys.exit(f"no Chromium at {args.chromium} (apt install chromium, or --client aiortc)")
    results = asyncio.run(run(args))
    print(
        f"glass-to-glass round trip, {'headless Chromium' if args.client == 'chromium' else 'an aiortc peer'} "
        f"on loopback, our graphs on {Ours.device}, {args.seconds:g} s after {args.warmup:g} s warm-up"
    )
    print(f"{'size':<10}{'server':<28}{'median ms':>10}{'p95 ms':>9}{'fps':>7}{'received':>11}")
    for (name, width, height), r in results.items():
        print(
            f"{f'{width}x{height}':<10}{name:<28}{r['median_ms']:>10.1f}{r['p95_ms']:>9.1f}{r['fps']:>7.1f}"
            f"{r['received']:>11}"
        )
    for width, height in dict.fromkeys(key[1:] for key in results):
        ours = {name: results[(name, width, height)].get("server_p50_ms") for name in ("passthrough", "full")}
        if None not in ours.values():
            print(
                f"{width}x{height} inside our server (a picture's arrival to its hand-over to the encoder), "
                f"median ms: passthrough {ours['passthrough']:g}, full {ours['full']:g}"
            )
    for (name, width, height), r in results.items():
        if name == "full" and r["stages_p50_ms"]:
            per_stage = ", ".join(f"{stage} {ms:g}" for stage, ms in r["stages_p50_ms"].items())
            print(f"{width}x{height} full graph, median ms per stage: {per_stage}")
        if name == "full, 50 ms budget":
            print(f"{width}x{height} {name}: quality rung at the end {r['rung']}, frames dropped {r['dropped']}")
        if name == "full" and r["avatar_redrawn"] is not None:
            print(f"{width}x{height} full graph: the avatar was drawn anew on {r['avatar_redrawn']:.0%} of frames")
    sizes = [key[1:] for key in results if key[0] == "relay"]
    first = JSON_SIZE if JSON_SIZE in sizes else sizes[0]  # the JSON line is for 640x480 when it was measured
    relay, passthrough, full = (results[(name, *first)] for name in ("relay", "passthrough", "full"))
    budgeted = results[("full, 50 ms budget", *first)]
    added = full["median_ms"] - passthrough["median_ms"]
    print(
        f"{first[0]}x{first[1]}: passthrough vs relay median {passthrough['median_ms'] - relay['median_ms']:+.1f} ms "
        f"(target < 0); full graph adds {added:.1f} ms (target <= 15)"
    )
    print(
        json.dumps(
            {
                "relay_median_ms": round(relay["median_ms"], 2),
                "passthrough_median_ms": round(passthrough["median_ms"], 2),
                "full_median_ms": round(full["median_ms"], 2),
                "added_ms": round(added, 2),
                "fps": round(full["fps"], 2),
                "relay_fps": round(relay["fps"], 2),
                "passthrough_fps": round(passthrough["fps"], 2),
                "passthrough_stock_receive_median_ms": round(
                    results[("passthrough, stock receive", *first)]["median_ms"], 2
                ),
                "size": f"{first[0]}x{first[1]}",
                "client": args.client,
                "device": str(Ours.device),
                "full_received": full["received"],
                "sway_px": args.sway,
                "avatar_redrawn": None if full["avatar_redrawn"] is None else round(full["avatar_redrawn"], 3),
                "full_budget_50ms_median_ms": round(budgeted["median_ms"], 2),
                "full_budget_50ms_fps": round(budgeted["fps"], 2),
                "passthrough_server_median_ms": passthrough["server_p50_ms"],
                "full_server_median_ms": full["server_p50_ms"],
            }
        )
    )


if __name__ == "__main__":
    main()
