"""The avatar stage: a drawn face that reacts to the user's expression and moves its mouth with its voice.

Each frame the stage sets targets from the frame's annotations — expression from the user's
emotion (mirrored, or answered empathetically), mouth from the voice stage's viseme and
openness, gaze and head turn toward the user's face, blinks on a random (seeded) schedule —
moves every parameter toward its target with a time constant, so a label flip never makes
the face jump, draws the face (`models.avatar`; a face that has not moved by a visible amount
since a recent frame is not drawn again) and blends it into the frame with the composite
kernel, in the frame's own layout.

The face is drawn at most `redraw_hz` times a second of the stream, as a drawn character is
animated: a source faster than that shows each drawing on several frames, while every
parameter still eases on every frame. A talking mouth moves on almost every frame, so without
the bound a 120 fps source would pay for 120 drawings a second while the avatar speaks, work
no viewer sees.

Layouts: `pip` puts the face in a corner; `replace` puts it over the user's face (the largest
tracked one; in the corner when there is none); `side` splits the picture: the middle half of
the camera's view on the left, the avatar large on a plain backdrop on the right (the output
keeps the input's size, so the two sit side by side within it).

Annotation: `smile`, `brows`, `mouth`, `eye_open`, `viseme`, `blink`, `box` (where it was drawn),
`redrawn` (false: the face's last drawing still showed it).
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any, Literal

import torch
from pydantic import Field

from kernels import ops
from kernels.colour import i420_planes
from models.avatar import THEMES, FaceSprites, FaceState
from pipeline.annotation import Annotation, missing
from pipeline.frames import Frame
from pipeline.stage import ComputeStage, StageContext, StageOptions

BLINK_S = 0.15  # how long the eyes stay shut
BLINK_GAP_S = (2.0, 6.0)  # seconds between blinks, drawn uniformly
MARGIN = 0.03  # of the frame height, between the picture-in-picture and the frame's edge
BACKDROP_RGB = (46, 52, 64)  # behind the avatar in the side-by-side layout
BACKDROP_YUV = (60, 134, 125)  # the same colour as BT.601 limited-range Y, U, V
# The mouth's width for each viseme: rounded for "oo"/"oh", wide for "ee".
MOUTH_WIDTH = {"ou": 0.1, "oh": 0.25, "aa": 0.6, "E": 0.85, "ih": 0.95, "SS": 0.8, "CH": 0.45, "RR": 0.4}
CLOSED_VISEMES = ("PP",)  # lips together
# Empathetic answers: (smile, brows) for the user's dominant emotion.
EMPATHY = {
    "happy": (0.9, 0.2),
    "sad": (0.25, 0.45),
    "angry": (0.0, 0.25),
    "fear": (0.2, 0.5),
    "surprise": (0.4, 0.7),
    "disgust": (0.0, 0.2),
    "neutral": (0.15, 0.0),
}


def mirrored(probs: dict[str, float]) -> tuple[float, float]:
    """(smile, brows) showing the user's own expression back."""
    p = probs.get
    smile = p("happy", 0) - p("sad", 0) - 0.6 * p("angry", 0) - 0.6 * p("disgust", 0) - 0.3 * p("fear", 0)
    brows = p("surprise", 0) + 0.5 * p("fear", 0) + 0.3 * p("sad", 0) - p("angry", 0) - 0.5 * p("disgust", 0)
    return max(-1.0, min(1.0, smile)), max(-1.0, min(1.0, brows))


def empathetic(probs: dict[str, float]) -> tuple[float, float]:
    """(smile, brows) answering the user's expression: each emotion's answer, weighted by its probability."""
    total = sum(probs.values()) or 1.0
    smile = sum(EMPATHY.get(label, (0, 0))[0] * p for label, p in probs.items()) / total
    brows = sum(EMPATHY.get(label, (0, 0))[1] * p for label, p in probs.items()) / total
    return smile, brows


def largest(faces: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The face with the biggest box (the one nearest the camera), or None."""
    return max(faces, key=lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]), default=None)


def approach(value: float, target: float, dt: float, tau: float) -> float:
    """One step of a first-order follower: after `tau` seconds, 63% of the way to a steady target."""
    if tau <= 0:
        return target
    return value + (target - value) * (1.0 - math.exp(-max(0.0, dt) / tau))


class AvatarOptions(StageOptions):
    layout: Literal["pip", "replace", "side"] = "pip"
    corner: Literal["top-left", "top-right", "bottom-left", "bottom-right"] = "top-right"
    size: float = Field(0.35, gt=0.05, le=1.0)  # of the frame's height
    mode: Literal["mirror", "empathetic"] = "empathetic"
    theme: str = "warm"
    seed: int = 0  # blink schedule
    expression_tau_s: float = Field(0.3, ge=0.0, le=10.0)  # how fast the expression follows
    mouth_tau_s: float = Field(0.04, ge=0.0, le=1.0)  # how fast the mouth follows the voice
    gaze_tau_s: float = Field(0.25, ge=0.0, le=10.0)
    redraw_hz: float = Field(30.0, ge=0.0, le=1000.0)  # the face is drawn at most this often (0: any frame)


class AvatarAnnotation(Annotation):
    smile: float
    brows: float
    mouth: float  # openness, 0..1
    eye_open: float
    viseme: str  # the mouth shape of the phoneme sounding
    blink: bool
    box: list[int]  # where the face was drawn: x0, y0, x1, y1 in output pixels
    redrawn: bool  # drawn afresh on this frame (else the last drawing, `redraw_hz`)


class Avatar(ComputeStage):
    """Draws the avatar into the frame; annotation: the face's parameters and where it was drawn."""

    type_name = "avatar"
    Annotation = AvatarAnnotation
    Options = AvatarOptions
    inputs = ("emotion", "voice")

    def set_layout(self, layout: str) -> None:
        """Switch between pip, replace and side from the next frame on (a command from the page)."""
        self.options = self.options.model_copy(update={"layout": AvatarOptions(layout=layout).layout})

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        stream = ctx.stream
        if stream is None or not stream.has_video:
            raise ValueError("needs video")
        if self.options.theme not in THEMES:
            raise ValueError(f"unknown theme {self.options.theme!r}; use one of {', '.join(THEMES)}")
        self._layout = stream.pixel_format.kernel_layout
        self._colour = stream.colour.kernel_args(stream.height)
        self._frame_size = (stream.width, stream.height)
        self.state = FaceState()
        self._last_time: float | None = None
        self._random = random.Random(self.options.seed)
        self._next_blink = self._random.uniform(*BLINK_GAP_S)
        self._blink_until = -1.0
        self.sprites = FaceSprites()
        self._shown: tuple[float, tuple[Any, ...], torch.Tensor] | None = None  # (time s, what it fits, face)

    def targets(self, frame: Frame) -> tuple[FaceState, str, bool]:
        """Where each parameter is heading on this frame, the viseme, and whether the eyes are shut for a blink."""
        emotion = self.input_annotation(frame, "emotion") or {}
        voice = self.input_annotation(frame, "voice") or {}
        faces = emotion.get("faces") or []
        face = largest(faces)
        smile, brows = 0.1, 0.0
        gaze_x = gaze_y = 0.0
        if face is not None and face.get("probs"):
            drive = mirrored if self.options.mode == "mirror" else empathetic
            smile, brows = drive(face["probs"])
            width, height = self._frame_size
            x0, y0, x1, y1 = face["box"]
            gaze_x = max(-1.0, min(1.0, ((x0 + x1) / 2 / width) * 2 - 1))
            gaze_y = max(-1.0, min(1.0, ((y0 + y1) / 2 / height) * 2 - 1))
        viseme = voice.get("viseme") or "sil"
        speaking = bool(voice.get("avatar_speaking"))
        mouth = float(voice.get("mouth") or 0.0) if speaking else 0.0
        if viseme in CLOSED_VISEMES:
            mouth = 0.0
        now = frame.time_s
        if now >= self._next_blink:
            self._blink_until = now + BLINK_S
            self._next_blink = now + self._random.uniform(*BLINK_GAP_S)
        blinking = now < self._blink_until
        target = FaceState(
            smile=smile,
            brows=brows,
            eye_open=0.0 if blinking else 1.0,
            mouth_open=min(1.0, mouth * 1.5),
            mouth_width=MOUTH_WIDTH.get(viseme, 0.5) if speaking else 0.5,
            gaze_x=-gaze_x,  # the avatar faces the viewer: the user's right is its left
            gaze_y=gaze_y,
            turn=-0.5 * gaze_x,
        )
        return target, viseme, blinking

    def step(self, frame: Frame) -> tuple[FaceState, str, bool]:
        """Move the face toward this frame's targets; returns the new state."""
        target, viseme, blinking = self.targets(frame)
        now = frame.time_s
        if self._last_time is None:  # the first frame: start where the targets are
            self._last_time = now
            self.state = target
            return self.state, viseme, blinking
        dt = now - self._last_time
        self._last_time = now
        o, s = self.options, self.state

        def follow(value: float, goal: float, tau: float) -> float:
            return approach(value, goal, dt, tau)

        self.state = replace(
            s,
            smile=follow(s.smile, target.smile, o.expression_tau_s),
            brows=follow(s.brows, target.brows, o.expression_tau_s),
            eye_open=target.eye_open,  # blinks are quick on purpose
            mouth_open=follow(s.mouth_open, target.mouth_open, o.mouth_tau_s),
            mouth_width=follow(s.mouth_width, target.mouth_width, o.mouth_tau_s),
            gaze_x=follow(s.gaze_x, target.gaze_x, o.gaze_tau_s),
            gaze_y=follow(s.gaze_y, target.gaze_y, o.gaze_tau_s),
            turn=follow(s.turn, target.turn, o.gaze_tau_s),
        )
        return self.state, viseme, blinking

    def compute(self, frame: Frame) -> dict[str, Any]:
        if not frame.has_image:
            return missing("no video")
        state, viseme, blinking = self.step(frame)
        if self.options.layout == "side":
            self._split(frame.image)
        x, y, side = self._placement(frame)
        drawn = self.sprites.drawn
        face = self._face(state, side, frame)
        ops.composite(frame.image, face, layout=self._layout, x=x, y=y, **self._colour)
        return {
            "smile": round(state.smile, 3),
            "brows": round(state.brows, 3),
            "mouth": round(state.mouth_open, 3),
            "eye_open": round(state.eye_open, 3),
            "viseme": viseme,
            "blink": blinking,
            "box": [x, y, x + side, y + side],
            "redrawn": self.sprites.drawn > drawn,
        }

    def _face(self, state: FaceState, side: int, frame: Frame) -> torch.Tensor:
        """The face to blend into `frame`: the last drawing while the next is not due (`redraw_hz`,
        with a quarter period of slack so a camera at that rate, whose frames jitter, redraws on
        every frame), else the face of `state`, drawn or from the sprites."""
        device = frame.image.device
        now, look = frame.time_s, (side, self.options.theme, device)
        shown, hz = self._shown, self.options.redraw_hz
        if shown is not None and hz > 0 and shown[1] == look and 0.0 <= now - shown[0] < 0.75 / hz:
            return shown[2]
        face = self.sprites.face(state, side, theme=self.options.theme, device=device)
        self._shown = (now, look, face)
        return face

    def _split(self, image: Any) -> None:
        """Side by side: the middle half of the picture moves to the left half; the right half becomes backdrop."""
        width, _ = self._frame_size
        half = (width // 2) & ~1
        quarter = (width // 4) & ~1
        if self._layout == "rgb":
            image[:, :half] = image[:, quarter : quarter + half].clone()
            image[:, half:] = torch.tensor(BACKDROP_RGB, dtype=image.dtype, device=image.device)
            return
        for plane, value, scale in zip(i420_planes(image), BACKDROP_YUV, (1, 2, 2), strict=True):
            q, h = quarter // scale, half // scale  # the chroma planes are half as wide
            plane[:, :h] = plane[:, q : q + h].clone()
            plane[:, h:] = value

    def _placement(self, frame: Frame) -> tuple[int, int, int]:
        """(x, y, side) of the avatar on the frame, even-aligned."""
        width, height = self._frame_size
        if self.options.layout == "side":
            half = (width // 2) & ~1
            side = max(16, int(min(half, height) * 0.9)) & ~1
            return (half + (width - half - side) // 2) & ~1, ((height - side) // 2) & ~1, side
        if self.options.layout == "replace":
            faces = (self.input_annotation(frame, "emotion") or {}).get("faces") or []
            if faces:
                x0, y0, x1, y1 = largest(faces)["box"]
                side = max(16, int(max(x1 - x0, y1 - y0) * 1.2)) & ~1
                return int((x0 + x1 - side) / 2) & ~1, int((y0 + y1 - side) / 2) & ~1, side
        side = max(16, int(height * self.options.size)) & ~1
        margin = int(height * MARGIN) & ~1
        right = self.options.corner.endswith("right")
        bottom = self.options.corner.startswith("bottom")
        x = width - side - margin if right else margin
        y = height - side - margin if bottom else margin
        return x & ~1, y & ~1, side
