"""The page in real browsers, headless: Debian's Chromium and Debian's Firefox ESR.

Chromium reads the camera from a Y4M file made here (the astronaut, public domain) and the
microphone from a WAV of eSpeak NG speech. The test opens the page, presses Start, and checks
that processed video plays and that analytics naming the face's expression arrive. Firefox has
no file-backed camera, only its synthetic one (a colour pattern and a tone): there the test
checks that the page connects, the processed video plays and the analytics arrive.

Without a browser the test skips, so a developer can run the suite without one; CI sets
REQUIRE_BROWSER=1 and installs both, and there a missing browser fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from pipeline.config import IceServerConfig, load_config, with_ice_servers
from pipeline.webrtc.server import Server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REQUIRED = os.environ.get("REQUIRE_BROWSER") == "1"
pytestmark = pytest.mark.browser


def needs(browser: str, path: str) -> None:
    if not Path(path).exists() and not REQUIRED:
        pytest.skip(f"no {browser} here (apt install {Path(path).name}; CI always runs this)")


def driver_module():
    """Playwright's async API: skipped without it on a developer's machine, a failure in CI."""
    if REQUIRED:
        import playwright.async_api  # CI installs the dev extra: missing, this fails the test

        return playwright.async_api
    return pytest.importorskip("playwright.async_api", reason="the dev extra installs playwright")


FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def face_y4m(path: Path, *, frames: int = 60, size: tuple[int, int] = (640, 480)) -> Path:
    """The astronaut's face, drifting slowly, as raw yuv420p in a Y4M file (Chromium loops it)."""
    from skimage import data

    width, height = size
    picture = data.astronaut()[:320, 60:380]
    wide = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
    scene = wide.reformat(width=width + frames, height=height)
    pixels = scene.to_ndarray(format="rgb24")
    with av.open(str(path), "w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("rawvideo", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            view = np.ascontiguousarray(pixels[:, i : i + width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(view, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def speech_wav(path: Path) -> Path:
    from voice_kit import resample, spoken

    speech, _, _ = spoken("Hello there, I am talking to the pipeline from a browser.")
    # Chromium plays the file in a loop: a pause after it lets each turn end, to be recognised.
    speech = np.concatenate((speech, np.zeros(24000, np.float32)))
    samples = resample(speech, 16000, 48000)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_the_page_in_chromium_plays_processed_video_and_shows_analytics(tmp_path):
    needs("Chromium", CHROMIUM)
    playwright = driver_module()
    pytest.importorskip("skimage", reason="the test face comes from scikit-image")
    camera = face_y4m(tmp_path / "face.y4m")
    microphone = speech_wav(tmp_path / "speech.wav")
    flags = [*FLAGS, f"--use-file-for-fake-video-capture={camera}", f"--use-file-for-fake-audio-capture={microphone}"]

    async def scenario():
        from webrtc_kit import StunServer

        stun = await StunServer.start()  # the page's peer connection must be given it
        config = with_ice_servers(load_config("default"), [IceServerConfig(urls=[stun.url])])
        server = Server(config, device=torch.device("cpu"), port=0)
        await server.start()
        try:
            async with playwright.async_playwright() as driver:
                browser = await driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
                try:
                    page = await browser.new_page()
                    errors: list[str] = []
                    page.on("pageerror", lambda exc: errors.append(str(exc)))
                    await page.goto(server.url)
                    await page.wait_for_function("document.getElementById('camera').options.length > 0")
                    await page.click("#start")
                    await page.wait_for_function("document.getElementById('video').videoWidth > 0", timeout=30_000)
                    shown_at = await page.evaluate("document.getElementById('video').currentTime")
                    await asyncio.sleep(2.0)
                    played = await page.evaluate("document.getElementById('video').currentTime") - shown_at
                    analytics = await page.wait_for_function(
                        "window.lastAnalytics && window.lastAnalytics.emotion && "
                        "window.lastAnalytics.emotion.faces.length && window.lastAnalytics.emotion.faces[0].label && "
                        "window.lastAnalytics",
                        timeout=30_000,
                    )
                    message = await analytics.json_value()
                    size = await page.evaluate(
                        "[document.getElementById('video').videoWidth, document.getElementById('video').videoHeight]"
                    )
                    panel = await page.inner_text("#faces")
                    # What the microphone said, recognised, in the page's conversation panel.
                    await page.wait_for_function(
                        "document.getElementById('transcript').innerText.toLowerCase().includes('browser')",
                        timeout=30_000,
                    )
                    transcript = await page.inner_text("#transcript")
                    ice = await page.evaluate("pc.getConfiguration().iceServers.map((s) => s.urls).flat()")
                    sessions_while = len(server.sessions)
                finally:
                    await browser.close()
            await asyncio.wait_for(_until(lambda: not server.sessions), 15)
            return played, message, size, panel, (ice, stun.url), sessions_while, errors, transcript
        finally:
            await server.stop()
            stun.close()

    played, message, size, panel, ice, sessions_while, errors, transcript = asyncio.run(scenario())
    lines = transcript.lower().splitlines()
    assert any(line.startswith("you:") and "browser" in line for line in lines), transcript
    assert ice[0] == [ice[1]], ice  # the page's peer connection has the server's STUN server
    assert not errors, errors
    assert sessions_while == 1
    assert played > 1.0  # the processed video is playing, not frozen on a frame
    assert size == [640, 480]
    face = message["emotion"]["faces"][0]
    assert face["label"] == "happy"
    assert "happy" in panel  # the page's live panel shows it
    assert message["latency_ms"] > 0 and (message.get("quality") or {}).get("rung")


async def _until(check) -> None:
    while not check():
        await asyncio.sleep(0.1)


def test_the_page_in_firefox_plays_processed_video_and_shows_analytics(tmp_path):
    from bidi_kit import FIREFOX, Firefox

    needs("Firefox", FIREFOX)

    async def scenario():
        server = Server(load_config("default"), device=torch.device("cpu"), port=0)
        await server.start()
        try:
            async with Firefox(tmp_path / "profile") as firefox:
                await firefox.navigate(server.url)
                await firefox.wait_for("document.getElementById('camera').options.length > 0")
                await firefox.evaluate("document.getElementById('start').click()")
                await firefox.wait_for("document.getElementById('video').videoWidth > 0")
                shown_at = await firefox.evaluate("document.getElementById('video').currentTime")
                await asyncio.sleep(2.0)
                played = await firefox.evaluate("document.getElementById('video').currentTime") - shown_at
                message = await firefox.wait_for("window.lastAnalytics")
                panel = await firefox.evaluate("document.getElementById('latency').textContent")
                sessions_while = len(server.sessions)
            await asyncio.wait_for(_until(lambda: not server.sessions), 15)
            return played, message, panel, sessions_while
        finally:
            await server.stop()

    played, message, panel, sessions_while = asyncio.run(scenario())
    assert sessions_while == 1
    assert played > 1.0
    assert "emotion" in message and message["latency_ms"] > 0
    assert panel.endswith(" ms")


def test_without_playwright_the_chromium_test_fails_under_require_browser(monkeypatch):
    """CI sets REQUIRE_BROWSER=1: there a missing Playwright must fail the browser test, not skip it."""
    import builtins
    import sys

    real_import = builtins.__import__

    def no_playwright(name, *args, **kwargs):
        if name.startswith("playwright"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    for module in [m for m in sys.modules if m.startswith("playwright")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(builtins, "__import__", no_playwright)
    monkeypatch.setattr(sys.modules[__name__], "REQUIRED", True)
    with pytest.raises(ModuleNotFoundError):
        driver_module()
    monkeypatch.setattr(sys.modules[__name__], "REQUIRED", False)
    with pytest.raises(pytest.skip.Exception):
        driver_module()
