"""A source made in-process: a panning picture (a real face, or colour bars), and a beeping tone.

It needs no file, camera or network, so the demo, the tests and the benchmarks all run on any
machine. The "face" scene is the astronaut Eileen Collins (NASA photograph, public domain, as
shipped with scikit-image), beside her mirror image, panning slowly: a real face for the
emotion stage. The "card" scene is colour bars with a bouncing white square. Each frame costs
one slot-sized copy and a small fill, so a synthetic run measures the pipeline rather than
the source. Frames are I420 like decoded video (or RGB when asked), so
stages meet the same layout here as with a real file.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import torch

from kernels.colour import i420_planes, rgb_to_i420
from pipeline.device import copy_frame
from pipeline.errors import SourceError
from pipeline.frames import AudioChunk, Frame
from pipeline.io.base import Source, StreamInfo
from pipeline.pixels import MATRIX_SMPTE170M, RANGE_LIMITED, Colour, PixelFormat
from pipeline.ringbuffer import RingBuffer

TONE_HZ = 440  # a whole number of cycles per second, so one cached second of audio loops seamlessly
TONE_AMPLITUDE = 0.5  # of full scale [-1, 1]
BEEP_ON_S = 0.5  # each second: this long on, the rest off; a level meter visibly moves
BEEP_FADE_S = 0.005  # 5 ms ramps at both ends of a beep, so it does not click
SCROLL_PERIOD_S = 4  # the bars scroll one full picture width in this time
FACE_SCROLL_PERIOD_S = 20  # the face scene pans one picture width (face to mirror image) in this time
FACE_PICTURE = Path(__file__).resolve().parent / "assets" / "astronaut.jpg"  # 512×288 RGB JPEG
SCENES = ("card", "face")
SQUARE_SPEED = (0.5, 0.4)  # square speed in picture widths / heights per second (x, y)
WHITE_RGB = 255
WHITE_YUV = (235, 128, 128)  # limited-range white: Y, U, V
CARD_COLOUR = Colour(matrix=MATRIX_SMPTE170M, primaries=6, transfer=6, range=RANGE_LIMITED)  # BT.601 TV range

# Seven bars, as on a test card: white, yellow, cyan, green, magenta, red, blue (RGB).
BAR_COLOURS = (
    (235, 235, 235),
    (235, 235, 16),
    (16, 235, 235),
    (16, 235, 16),
    (235, 16, 235),
    (235, 16, 16),
    (16, 16, 235),
)


class SyntheticSource(Source):
    """A panning scene with a beeping 440 Hz tone, finite or endless, paced or as fast as it can."""

    def __init__(
        self,
        *,
        width: int = 640,
        height: int = 360,
        fps: int | Fraction = 30,
        frames: int | None = 300,
        audio_rate: int = 48000,
        live: bool = False,
        device: torch.device | str = "cpu",
        pixel_format: PixelFormat | str = PixelFormat.YUV420P,
        scene: str = "card",
    ):
        _check_even_size("width", width)
        if scene not in SCENES:
            raise ValueError(f"scene must be one of {', '.join(SCENES)}, got {scene!r}")
        _check_even_size("height", height)
        fps = Fraction(fps)
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if frames is not None and (not isinstance(frames, int) or frames < 0):
            raise ValueError(f"frames must be a count >= 0 or None (endless), got {frames!r}")
        if not isinstance(audio_rate, int) or audio_rate <= 0:
            raise ValueError(f"audio_rate must be a positive number of Hz, got {audio_rate!r}")
        self.width = width
        self.height = height
        self.fps = fps
        self.frame_count = frames  # None: endless
        self.audio_rate = audio_rate  # Hz
        self.live = live
        self.device = torch.device(device)
        self.pixel_format = PixelFormat(pixel_format)
        self.scene = scene
        wide = _test_card(height, width) if scene == "card" else _face_scene(height, width)  # H×2W×3
        if self.pixel_format is PixelFormat.YUV420P:
            wide = rgb_to_i420(wide, matrix="bt601", full_range=False)
        self._wide = wide.to(self.device)
        self._audio_second = _beep_second(audio_rate)  # one second of the audio, which repeats
        self.offered = 0  # schedule ticks that have come, taken or not (live)
        self.taken = 0  # frames given to the pipeline
        self.missed = 0  # ticks skipped because the pipeline was not taking frames when they came

    @property
    def info(self) -> StreamInfo:
        return StreamInfo(
            width=self.width,
            height=self.height,
            fps=self.fps,
            time_base=1 / self.fps,  # so pts == index
            audio_rate=self.audio_rate,
            audio_channels=1,
            pixel_format=self.pixel_format,
            colour=CARD_COLOUR,
            frame_count=self.frame_count,
            description=f"synthetic {self.scene} {self.width}x{self.height} {self.pixel_format}",
        )

    async def frames(self, ring: RingBuffer) -> AsyncIterator[Frame]:
        """Yield frames 0, 1, 2, … with pixels drawn into leased slots; paced at fps when live.

        Live, it behaves as a camera: frame tick t exists at anchor + t/fps whether or not it is
        taken, and is stamped with that time, so a wait for a ring slot counts in its latency.
        Ticks that passed while the pipeline was not taking frames are skipped (counted as
        missed; their sound rides on the next frame taken, so the audio never skips); the
        schedule is never restarted, so the offered rate is the one asked for.
        """
        expected = self.info.frame_shape
        if ring.shape != expected or ring.storage.dtype != torch.uint8:
            raise SourceError(
                f"synthetic source: ring slots are {ring.shape} {ring.storage.dtype}, need {expected} uint8"
            )
        wide = self._wide.to(ring.storage.device)  # once, so each frame's copy stays on one device
        period_ns = 1e9 / float(self.fps)
        anchor_ns = time.monotonic_ns()  # live schedule: tick t is due at anchor + t·period
        index, tick = 0, 0  # frames given out; the schedule's tick (they differ by the ticks missed)
        self.offered = self.taken = self.missed = 0
        while self.frame_count is None or index < self.frame_count:
            first_tick = tick
            if self.live:
                now_ns = time.monotonic_ns()
                due_ns = anchor_ns + round(tick * period_ns)
                if now_ns < due_ns:
                    await asyncio.sleep((due_ns - now_ns) / 1e9)
                else:  # behind: the newest tick that exists now is the one a camera would give
                    tick = max(tick, int((now_ns - anchor_ns) // period_ns))
                capture_ns = anchor_ns + round(tick * period_ns)
            else:
                await asyncio.sleep(0)  # unpaced, but let the rest of the loop run between frames
                capture_ns = 0
            self.missed += tick - first_tick
            self.offered = tick + 1
            lease = await ring.acquire()
            try:
                self._draw(lease.tensor, wide, tick)
                audio = self._audio_chunk(first_tick, tick + 1)
            except BaseException:
                lease.release()
                raise
            self.taken = index + 1
            yield Frame(
                index=index,
                pts=tick,
                time_base=1 / self.fps,
                capture_ns=capture_ns if self.live else time.monotonic_ns(),
                lease=lease,
                audio=audio,
            )
            index += 1
            tick += 1

    def stats(self) -> dict[str, Any]:
        """Live: frames the schedule offered, the ones taken in, and the ones missed while behind."""
        return {"offered": self.offered, "taken": self.taken, "missed": self.missed}

    def _draw(self, slot: torch.Tensor, wide: torch.Tensor, index: int) -> None:
        """Draw frame `index` into `slot` in place: the scrolled scene, then (on the card) the square.

        Offsets, sizes and positions are even, so in I420 every 2×2 chroma block is whole.
        """
        w, h = self.width, self.height
        if self.scene == "card":  # scrolls round: the strip is the card twice
            offset = int(index * w / (SCROLL_PERIOD_S * self.fps)) % w & ~1  # px
            side = max(2, min(w, h) // 8) & ~1  # px
        else:  # pans from the face to its mirror image and back
            offset = _bounce(int(index * w / (FACE_SCROLL_PERIOD_S * self.fps)), w) & ~1
            side = 0  # no square over a face
        t_s = index / self.fps
        x = _bounce(int(t_s * SQUARE_SPEED[0] * w), w - side) & ~1
        y = _bounce(int(t_s * SQUARE_SPEED[1] * h), h - side) & ~1
        if self.pixel_format is PixelFormat.RGB24:
            copy_frame(slot, wide[:, offset : offset + w])
            slot[y : y + side, x : x + side].fill_(WHITE_RGB)
            return
        # `wide` is the I420 image of the double-width strip: planes H×2W and (H/2)×W.
        for plane, source, value, scale in zip(i420_planes(slot), i420_planes(wide), WHITE_YUV, (1, 2, 2), strict=True):
            plane_w = w // scale
            copy_frame(plane, source[:, offset // scale : offset // scale + plane_w])
            plane[y // scale : (y + side) // scale, x // scale : (x + side) // scale].fill_(value)

    def _audio_chunk(self, first: int, end: int) -> AudioChunk:
        """The samples of frames `first` up to `end` (excluded): boundaries are round(i · rate / fps).

        Rounding each boundary from the index, not adding per-frame counts, is what keeps the
        audio from drifting at rates like 30000/1001 fps, where a frame holds 1601.6 samples.
        """
        start = self._sample_at(first)
        n = self._sample_at(end) - start
        rate = self.audio_rate
        positions = torch.arange(start, start + n) % rate  # the audio repeats every second
        return AudioChunk(samples=self._audio_second[positions].unsqueeze(0), sample_rate=rate, pts=start)

    def _sample_at(self, index: int) -> int:
        """The first sample of frame `index`: index · rate / fps, rounded half up, in exact integers."""
        num = 2 * index * self.audio_rate * self.fps.denominator + self.fps.numerator
        return num // (2 * self.fps.numerator)


def sample_source(**overrides: Any) -> SyntheticSource:
    """The built-in demo clip: 10 s of 640x360 at 30 fps of a real face, finite and as fast as it can go."""
    settings: dict[str, Any] = {"width": 640, "height": 360, "fps": 30, "frames": 300, "live": False, "scene": "face"}
    return SyntheticSource(**(settings | overrides))


def test_source(**overrides: Any) -> SyntheticSource:
    """An endless live test signal, 640x360 at 30 fps, paced like a camera."""
    settings: dict[str, Any] = {"width": 640, "height": 360, "fps": 30, "frames": None, "live": True}
    return SyntheticSource(**(settings | overrides))


test_source.__test__ = False  # type: ignore[attr-defined]  # not a test, whatever pytest infers from its name


def _check_even_size(name: str, value: int) -> None:
    # yuv420 encoders halve both dimensions for the colour planes, so odd sizes cannot be written.
    if not isinstance(value, int) or value <= 0 or value % 2:
        raise ValueError(f"{name} must be a positive even number of pixels, got {value!r}")


def _bounce(distance: int, span: int) -> int:
    """Position after travelling `distance` px back and forth over [0, span] px."""
    if span <= 0:
        return 0
    p = distance % (2 * span)
    return p if p <= span else 2 * span - p


def _test_card(height: int, width: int) -> torch.Tensor:
    """Colour bars above a grey ramp, twice side by side (H×2W×3 uint8), so any W-wide window wraps."""
    card = torch.empty((height, width, 3), dtype=torch.uint8)
    colours = torch.tensor(BAR_COLOURS, dtype=torch.uint8)
    bar_of_column = torch.arange(width) * len(BAR_COLOURS) // width
    bars_h = height * 3 // 4  # px; the ramp takes the bottom quarter
    card[:bars_h] = colours[bar_of_column]
    ramp = (torch.arange(width) * 255 // max(1, width - 1)).to(torch.uint8)
    card[bars_h:] = ramp[:, None]
    return torch.cat([card, card], dim=1).contiguous()


def _face_scene(height: int, width: int) -> torch.Tensor:
    """The astronaut beside her mirror image, each W×H (H×2W×3 uint8): any W-wide window wraps seamlessly."""
    try:
        with av.open(str(FACE_PICTURE)) as container:
            picture = next(container.decode(video=0))
    except (av.FFmpegError, OSError, StopIteration) as exc:
        raise SourceError(f"synthetic source: cannot read {FACE_PICTURE} ({exc})") from None
    face = torch.from_numpy(picture.reformat(width=width, height=height, format="rgb24").to_ndarray())
    return torch.cat([face, face.flip(1)], dim=1).contiguous()


def _beep_second(rate: int) -> torch.Tensor:
    """One second of audio (float32, `rate` samples): a tone for BEEP_ON_S with faded ends, then silence."""
    t_s = torch.arange(rate, dtype=torch.float64) / rate
    tone = torch.sin(2 * math.pi * TONE_HZ * t_s)
    fade = torch.clamp(torch.minimum(t_s, BEEP_ON_S - t_s) / BEEP_FADE_S, 0.0, 1.0)
    envelope = 0.5 - 0.5 * torch.cos(math.pi * fade)  # raised cosine: smooth at both ends of the ramp
    return (TONE_AMPLITUDE * tone * envelope).to(torch.float32)
