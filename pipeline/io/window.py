"""A desktop window that shows the processed video and plays its audio: the live monitor.

pygame (SDL2) draws the window and plays the sound. It is imported when a window opens, not
before, so machines with no display never load it. The picture is converted to RGB at the
size the window shows it by FFmpeg's scaler on a worker thread (well under a millisecond for
720p, where the same maths in torch on the CPU takes over ten); the event loop only blits
and flips. Audio goes through SDL's own playback thread, fed from a small buffer that never
lets the sound run more than `MAX_AUDIO_LAG_S` behind the picture.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import av
import numpy as np

from pipeline.errors import SinkError
from pipeline.frames import Frame
from pipeline.io.audio_align import ChunkResampler
from pipeline.io.base import Sink, StreamInfo
from pipeline.io.sinks import host_pixels
from pipeline.pixels import PixelFormat

log = logging.getLogger(__name__)

WINDOW = "window"  # the --output name
MAX_SCREEN_FRACTION = 0.9  # a picture larger than this much of the desktop is scaled down to fit
OVERLAY_EVERY_S = 0.5  # s between overlay text updates: readable numbers, and no font work per frame
FPS_WINDOW_S = 1.0  # s of recent frames the overlay's fps is measured over
MAX_AUDIO_LAG_S = 0.25  # s of sound buffered at most; beyond it the oldest is cut so sound keeps up
AUDIO_DEVICE_SAMPLES = 512  # samples per SDL callback: about 11 ms at 48 kHz
HEADLESS_DRIVERS = ("offscreen", "dummy")  # SDL video drivers that show nothing (tests ask for them by name)
FULL_QUALITY = "full"  # the rung shown when no scheduler has marked the frame


def display_available() -> bool:
    """Whether a window could open here: a desktop session on Linux, always on macOS and Windows."""
    if os.environ.get("SDL_VIDEODRIVER") in HEADLESS_DRIVERS:
        return True
    if sys.platform.startswith("linux") or sys.platform.startswith("freebsd"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def fit_size(width: int, height: int, bounds: tuple[int, int] | None) -> tuple[int, int]:
    """`width`×`height` scaled down (never up) to fit inside `bounds`, keeping the aspect, even-sized."""
    if bounds is None or bounds[0] <= 0 or bounds[1] <= 0:
        return width, height
    scale = min(1.0, bounds[0] / width, bounds[1] / height)
    return max(2, int(width * scale) & ~1), max(2, int(height * scale) & ~1)


def quality_rung(frame: Frame) -> str:
    """The quality rung a frame was made at: the scheduler's `quality` annotation, else full quality."""
    quality = frame.annotations.get("quality")
    if isinstance(quality, dict) and "rung" in quality:
        return str(quality["rung"])
    return FULL_QUALITY


class RateMeter:
    """Frames per second over the last `window_s` seconds."""

    def __init__(self, window_s: float = FPS_WINDOW_S):
        self.window_ns = int(window_s * 1e9)
        self._times: collections.deque[int] = collections.deque()

    def tick(self, now_ns: int) -> None:
        self._times.append(now_ns)
        while self._times and now_ns - self._times[0] > self.window_ns:
            self._times.popleft()

    @property
    def fps(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) * 1e9 / span if span else 0.0


class AudioPlayer:
    """Plays float32 audio through SDL's playback thread, keeping at most `max_lag_s` queued.

    The window is a live monitor, so sound that falls behind is cut rather than left to grow
    a delay; a late chunk leaves a moment of silence rather than stalling the picture.
    """

    def __init__(self, sample_rate: int, channels: int, *, max_lag_s: float = MAX_AUDIO_LAG_S):
        from pygame._sdl2 import audio as sdl_audio
        from pygame._sdl2 import sdl2

        self.sample_rate = sample_rate
        self.channels = channels
        self.frame_bytes = 4 * channels  # float32, interleaved
        self.max_bytes = int(max_lag_s * sample_rate) * self.frame_bytes
        self.played_samples = 0  # per channel, handed to the device
        self.cut_samples = 0  # per channel, dropped to keep the lag bounded
        self.underruns = 0  # callbacks that found too little sound and padded with silence
        self._buffer = bytearray()
        self._lock = threading.Lock()
        sdl2.init_subsystem(sdl2.INIT_AUDIO)
        names = sdl_audio.get_audio_device_names(False)
        if not names:
            raise SinkError("--output window: no audio output device")
        self._device = sdl_audio.AudioDevice(
            names[0], False, sample_rate, sdl_audio.AUDIO_F32, channels, AUDIO_DEVICE_SAMPLES, 0, self._fill
        )
        self._device.pause(0)

    @property
    def queued_samples(self) -> int:
        """Per channel, waiting for the device."""
        with self._lock:
            return len(self._buffer) // self.frame_bytes

    def push(self, samples: np.ndarray) -> None:
        """Queue (channels, n) float32 samples."""
        data = np.ascontiguousarray(samples.T, dtype=np.float32).tobytes()
        with self._lock:
            self._buffer += data
            excess = len(self._buffer) - self.max_bytes
            if excess > 0:
                excess -= excess % self.frame_bytes
                del self._buffer[:excess]
                self.cut_samples += excess // self.frame_bytes

    def _fill(self, _device: Any, stream: memoryview) -> None:
        """SDL's callback, on its audio thread: copy what is queued, pad the rest with silence."""
        wanted = len(stream)
        with self._lock:
            got = min(wanted, len(self._buffer))
            stream[:got] = self._buffer[:got]
            del self._buffer[:got]
            if got < wanted and self.played_samples:
                self.underruns += 1
            self.played_samples += got // self.frame_bytes
        if got < wanted:
            stream[got:] = bytes(wanted - got)

    def close(self) -> None:
        """Stop playback; safe to call twice. The counters stay readable."""
        device, self._device = self._device, None
        if device is not None:
            _pause_releasing_the_gil(device)
            device.close()  # paused: the callback is not running, so this cannot wait on it


def _sdl_library() -> ctypes.CDLL | None:
    """The SDL2 library pygame loaded (the same copy, so device ids match), or None if it cannot be found."""
    import pygame

    package = Path(pygame.__file__).resolve().parent
    for folder, pattern in (
        (package.parent / "pygame.libs", "libSDL2-2*.so*"),  # Linux wheels
        (package / ".dylibs", "libSDL2-2.0*.dylib"),  # macOS wheels
        (package, "SDL2.dll"),  # Windows wheels
    ):
        for path in sorted(folder.glob(pattern)):
            try:
                return ctypes.CDLL(str(path))
            except OSError:
                continue
    found = ctypes.util.find_library("SDL2")  # pygame built against the system's SDL
    return ctypes.CDLL(found) if found else None


def _pause_releasing_the_gil(device: Any) -> None:
    """Pause an SDL audio device without holding the GIL while SDL waits for its lock.

    SDL holds the device's lock while it runs our callback, and the callback needs the GIL.
    pygame's `pause` holds the GIL while it waits for that lock, so a pause that lands while a
    callback is starting deadlocks both threads. A ctypes call releases the GIL for the call.
    """
    library = _sdl_library()
    if library is None:
        device.pause(1)  # no better option; the race is rare
        return
    library.SDL_PauseAudioDevice.argtypes = (ctypes.c_uint32, ctypes.c_int)
    library.SDL_PauseAudioDevice.restype = None
    library.SDL_PauseAudioDevice(device.deviceid, 1)


class WindowSink(Sink):
    """Shows each frame in a desktop window with a one-line overlay, and plays the audio.

    The overlay reads: frames per second shown, end-to-end latency of the frame on screen
    (capture to display) and the quality rung it was made at. Closing the window (or Esc, or
    Q) calls `on_close`, which the job wires to the pipeline's stop, as Ctrl-C does.
    """

    def __init__(self, *, title: str = "pipeline", on_close: Callable[[], None] | None = None):
        self.title = title
        self.on_close = on_close
        self.frames_shown = 0
        self.frames_dropped = 0
        self.closed_by_user = False
        self.overlay_text = ""
        self.display_size = (0, 0)  # (width, height) of the picture as shown
        self.player: AudioPlayer | None = None
        self._downmix: ChunkResampler | None = None  # surround to stereo for the speakers
        self._info: StreamInfo | None = None
        self._pygame: Any = None
        self._screen: Any = None
        self._font: Any = None
        self._overlay: Any = None
        self._overlay_at_ns = 0
        self._meter = RateMeter()
        self._pool: ThreadPoolExecutor | None = None
        self._scale_to = (0, 0)  # (width, height) to scale to before rotating
        self.output_scale = 1.0  # the scheduler's output-resolution knob

    resizable_output = True  # the scheduler may lower what is shown (`set_output_scale`)

    def set_output_scale(self, scale: float) -> None:
        """Convert and upload the picture at `scale` × the window's size; SDL stretches it to fill the window.

        The scheduler's `lower_output_resolution` rung: at 0.5 the colour conversion and the upload
        handle a quarter of the pixels.
        """
        self.output_scale = min(1.0, max(0.1, float(scale)))

    async def open(self, info: StreamInfo) -> None:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        try:
            import pygame
        except ImportError:
            raise SinkError("--output window needs pygame (pip install pygame)") from None
        self._pygame = pygame
        self._info = info
        try:
            pygame.display.init()
            _check_real_display(pygame.display.get_driver())
            pygame.font.init()
            self._screen = self._open_window(pygame, info)
            self._font = pygame.font.Font(None, 22)
            if info.audio_rate:
                self.player = AudioPlayer(info.audio_rate, min(max(info.audio_channels, 1), 2))
                if info.audio_channels > 2:  # surround, mixed down to the two speakers (the centre too)
                    self._downmix = ChunkResampler(info.audio_rate, 2)
        except pygame.error as exc:
            self._quit()
            raise SinkError(f"--output window: cannot open a window ({_why_no_window(exc)})") from None
        except SinkError:
            self._quit()
            raise
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="window-convert")
        log.info(
            "window: %dx%d%s",
            *self.display_size,
            f", audio {info.audio_rate} Hz" if self.player is not None else ", no audio",
        )

    def _open_window(self, pygame: Any, info: StreamInfo) -> Any:
        width, height = (info.width, info.height) if info.has_video else (480, 64)
        turned = info.has_video and info.rotation % 180 == 90
        shown_w, shown_h = (height, width) if turned else (width, height)
        desktops = pygame.display.get_desktop_sizes() if hasattr(pygame.display, "get_desktop_sizes") else []
        bounds = None
        if desktops:
            bounds = (int(desktops[0][0] * MAX_SCREEN_FRACTION), int(desktops[0][1] * MAX_SCREEN_FRACTION))
        shown_w, shown_h = fit_size(shown_w, shown_h, bounds)
        self.display_size = (shown_w, shown_h)
        self._scale_to = (shown_h, shown_w) if turned else (shown_w, shown_h)
        pygame.display.set_caption(self.title)
        return pygame.display.set_mode((shown_w, shown_h))

    async def write(self, frame: Frame) -> None:
        if self._screen is None or self._pool is None:
            raise SinkError("--output window: write before open (or after close)")
        self._handle_events()
        now = time.monotonic_ns()
        if frame.audio is not None and self.player is not None and frame.audio.samples.shape[-1]:
            chunk = self._downmix(frame.audio) if self._downmix is not None else frame.audio
            self.player.push(chunk.samples.detach().cpu().numpy())
        if not frame.has_image:
            self.frames_dropped += 1
            return
        events = [e for e in frame.events.values() if e is not None]
        rgb = await asyncio.get_running_loop().run_in_executor(self._pool, self._to_rgb, frame.image, events)
        self._meter.tick(now)
        latency_ms = (time.monotonic_ns() - frame.capture_ns) / 1e6
        self._show(rgb, latency_ms, quality_rung(frame))
        self.frames_shown += 1

    def _to_rgb(self, image: Any, events: list[Any]) -> np.ndarray:
        """The picture as the window shows it: RGB, scaled to fit and turned upright. Worker thread."""
        assert self._info is not None
        info = self._info
        pixels = host_pixels(image, events)
        width, height = self._scale_to
        if self.output_scale < 1.0:
            width = max(2, int(width * self.output_scale) & ~1)
            height = max(2, int(height * self.output_scale) & ~1)
        if info.pixel_format is PixelFormat.YUV420P:
            picture = av.VideoFrame.from_numpy_buffer(pixels, format="yuv420p")
            matrix = "ITU709" if info.colour.matrix_name(info.height) == "bt709" else "ITU601"
            rgb = picture.reformat(
                width=width,
                height=height,
                format="rgb24",
                src_colorspace=matrix,
                src_color_range="JPEG" if info.colour.full_range else "MPEG",
                interpolation="AREA" if width < info.width else "BILINEAR",
            ).to_ndarray()
        else:
            picture = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            rgb = picture.reformat(width=width, height=height).to_ndarray()
        if info.rotation % 360:
            rgb = np.ascontiguousarray(np.rot90(rgb, k=(info.rotation // 90) % 4))
        return rgb

    def _show(self, rgb: np.ndarray, latency_ms: float, rung: str) -> None:
        pygame = self._pygame
        surface = pygame.image.frombuffer(rgb, (rgb.shape[1], rgb.shape[0]), "RGB")
        if (rgb.shape[1], rgb.shape[0]) != self.display_size:  # a lowered output resolution
            surface = pygame.transform.scale(surface, self.display_size)
        self._screen.blit(surface, (0, 0))
        now = time.monotonic_ns()
        if self._overlay is None or now - self._overlay_at_ns >= OVERLAY_EVERY_S * 1e9:
            fps = self._meter.fps
            shown = f"{fps:5.1f}" if fps else "   --"
            self.overlay_text = f"{shown} fps | e2e {latency_ms:5.1f} ms | rung {rung}"
            self._overlay = self._font.render(self.overlay_text, True, (255, 255, 255), (0, 0, 0))
            self._overlay_at_ns = now
        self._screen.blit(self._overlay, (6, 6))
        pygame.display.flip()

    def _handle_events(self) -> None:
        """Keep the window responsive; closing it (or Esc, or Q) stops the run once."""
        pygame = self._pygame
        for event in pygame.event.get():
            closing = event.type == pygame.QUIT or (
                event.type == pygame.KEYDOWN and event.key in (pygame.K_ESCAPE, pygame.K_q)
            )
            if closing and not self.closed_by_user:
                self.closed_by_user = True
                log.info("window closed: stopping")
                if self.on_close is not None:
                    self.on_close()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._quit()

    def _quit(self) -> None:
        if self.player is not None:
            self.player.close()
        if self._pygame is not None:
            self._pygame.quit()
        self._screen = None


def _check_real_display(driver: str) -> None:
    """SDL falls back to an invisible window when there is no display; say so instead of showing nothing."""
    if driver in HEADLESS_DRIVERS and os.environ.get("SDL_VIDEODRIVER") != driver:
        raise SinkError(f"--output window: no display to show a window on ({_no_display_hint()})")


def _no_display_hint() -> str:
    if sys.platform.startswith("linux"):
        return "DISPLAY and WAYLAND_DISPLAY are unset; write to a file or stream instead"
    return "write to a file or stream instead"


def _why_no_window(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if display_available() else f"{text}; {_no_display_hint()}"
