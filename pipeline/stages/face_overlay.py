"""Draws what the emotion stage inferred onto the picture: each face's box, and its label.

So a person watching the output sees what was read without opening the analytics: a box
around each tracked face (the detector's), a thinner one around the square the expression
model read, and above them the label and its probability ("happy 93%"), in a colour per
expression. Off in the default graph; `configs/annotated.yaml` turns it on.

Text is drawn with a built-in 5×7 pixel font (the labels' letters, digits, %), scaled with
the face, so nothing is loaded to draw it. Pixels are written in the frame's own layout: in
I420 a colour is its Y, U and V values, painted over whole 2×2 blocks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field

from kernels.colour import i420_planes
from pipeline.annotation import Annotation, missing
from pipeline.frames import Frame
from pipeline.pixels import PixelFormat, fill_rect, paint_value
from pipeline.stage import ComputeStage, StageContext, StageOptions

# 5×7 glyphs, one string of five characters per row ('#' lit).
GLYPHS = {
    "a": ["     ", "     ", " ### ", "    #", " ####", "#   #", " ####"],
    "d": ["    #", "    #", " ####", "#   #", "#   #", "#   #", " ####"],
    "e": ["     ", "     ", " ### ", "#   #", "#####", "#    ", " ### "],
    "f": ["  ## ", " #   ", "#### ", " #   ", " #   ", " #   ", " #   "],
    "g": ["     ", " ####", "#   #", "#   #", " ####", "    #", " ### "],
    "h": ["#    ", "#    ", "#### ", "#   #", "#   #", "#   #", "#   #"],
    "i": ["  #  ", "     ", " ##  ", "  #  ", "  #  ", "  #  ", " ### "],
    "l": [" ##  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "],
    "n": ["     ", "     ", "#### ", "#   #", "#   #", "#   #", "#   #"],
    "p": ["     ", "#### ", "#   #", "#   #", "#### ", "#    ", "#    "],
    "r": ["     ", "     ", "# ## ", "##  #", "#    ", "#    ", "#    "],
    "s": ["     ", "     ", " ####", "#    ", " ### ", "    #", "#### "],
    "t": [" #   ", " #   ", "#### ", " #   ", " #   ", " #  #", "  ## "],
    "u": ["     ", "     ", "#   #", "#   #", "#   #", "#  ##", " ## #"],
    "y": ["     ", "#   #", "#   #", "#   #", " ####", "    #", " ### "],
    "0": [" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "],
    "1": ["  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "],
    "2": [" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"],
    "3": ["#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "],
    "4": ["   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "],
    "5": ["#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "],
    "6": ["  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "],
    "7": ["#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "],
    "8": [" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "],
    "9": [" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "],
    "%": ["##   ", "##  #", "   # ", "  #  ", " #   ", "#  ##", "   ##"],
    " ": ["     "] * 7,
}
UNKNOWN = ["#####", "#   #", "#   #", "#   #", "#   #", "#   #", "#####"]  # a character the font lacks
GLYPH_W, GLYPH_H = 5, 7
MASKS_KEPT = 256  # text masks kept ready (labels × percentages × sizes in use)

# Per expression, the colour of its box and label (RGB); others (no reading yet) grey.
LABEL_RGB = {
    "happy": (60, 200, 90),
    "neutral": (200, 200, 200),
    "sad": (70, 120, 230),
    "surprise": (240, 200, 40),
    "angry": (230, 60, 50),
    "fear": (170, 90, 220),
    "disgust": (140, 170, 40),
}
UNREAD_RGB = (128, 128, 128)
TEXT_RGB = (255, 255, 255)
BACKING_RGB = (16, 16, 16)


def text_mask(text: str, scale: int) -> np.ndarray:
    """The lit pixels of `text` in the built-in font, each font pixel `scale`×`scale`, one column apart."""
    rows = ["".join(" ".join(GLYPHS.get(ch, UNKNOWN)[row] for ch in text.lower())) for row in range(GLYPH_H)]
    mask = np.array([[c == "#" for c in row] for row in rows], dtype=bool)
    return np.kron(mask, np.ones((scale, scale), dtype=bool))


class FaceOverlayOptions(StageOptions):
    line_px: int = Field(2, ge=1, le=20)  # the face box's line width
    show_crop: bool = True  # also outline the square the expression model read
    show_probability: bool = True  # "happy 93%" rather than "happy"


class FaceOverlayAnnotation(Annotation):
    faces: int  # how many faces were drawn


class FaceOverlay(ComputeStage):
    """Annotation: `faces`, how many faces were drawn."""

    type_name = "face_overlay"
    Annotation = FaceOverlayAnnotation
    Options = FaceOverlayOptions
    inputs = ("emotion",)

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        stream = ctx.stream
        if stream is None or not stream.has_video:
            raise ValueError("needs video")
        self._format = stream.pixel_format
        self._size = (stream.width, stream.height)
        self._masks: dict[tuple[str, int], torch.Tensor] = {}  # (text, scale) → lit pixels, on the device
        self._colours: dict[tuple[int, int, int], Any] = {
            rgb: paint_value(rgb, self._format, stream.colour, stream.height, ctx.device)
            for rgb in (*LABEL_RGB.values(), UNREAD_RGB, TEXT_RGB, BACKING_RGB)
        }

    def compute(self, frame: Frame) -> dict[str, Any]:
        if frame.lease is None:
            return missing("no video")
        reading = self.input_annotation(frame, "emotion")
        faces = (reading or {}).get("faces") or []
        for face in faces:
            colour = LABEL_RGB.get(face.get("label") or "", UNREAD_RGB)
            x0, y0, x1, y1 = (round(v) for v in face["box"])
            self._outline(frame, (x0, y0, x1, y1), self.options.line_px, colour)
            if self.options.show_crop and face.get("crop"):
                self._outline(frame, tuple(round(v) for v in face["crop"]), 1, colour)
            label = face.get("label")
            if label:
                text = label
                if self.options.show_probability and face.get("probs"):
                    text += f" {round(100 * face['probs'][label])}%"
                scale = max(2, min(4, (x1 - x0) // 60))
                self._text(frame, text, x0, y0 - (GLYPH_H + 3) * scale, scale, colour)
        return {"faces": len(faces)}

    def _outline(self, frame: Frame, box: tuple[int, int, int, int], line: int, colour: tuple[int, int, int]) -> None:
        x0, y0, x1, y1 = box
        for rect in (
            (x0, y0, x1, y0 + line),
            (x0, y1 - line, x1, y1),
            (x0, y0, x0 + line, y1),
            (x1 - line, y0, x1, y1),
        ):
            self._fill(frame, rect, colour)

    def _text(self, frame: Frame, text: str, x: int, y: int, scale: int, colour: tuple[int, int, int]) -> None:
        """The text in white on a dark backing with a colour bar under it, kept inside the picture."""
        rows, cols = GLYPH_H * scale, (GLYPH_W + 1) * scale * len(text) - scale
        pad = scale
        width, height = self._size
        h, w = rows + 2 * pad, cols + 2 * pad
        x = min(max(0, x), max(0, width - w))
        y = min(max(0, y), max(0, height - h - 2 * scale))
        self._fill(frame, (x, y, x + w, y + h), BACKING_RGB)
        self._fill(frame, (x, y + h, x + w, y + h + 2 * scale), colour)
        self._paint(frame, text, scale, x + pad, y + pad, TEXT_RGB)

    def _fill(self, frame: Frame, rect: tuple[int, int, int, int], rgb: tuple[int, int, int]) -> None:
        """A rectangle of one colour, clipped to the picture (whole 2×2 blocks in I420)."""
        width, height = self._size
        x0, y0, x1, y1 = rect
        x0, y0 = max(0, min(x0, width)) & ~1, max(0, min(y0, height)) & ~1
        x1, y1 = max(0, min(x1 + 1, width)) & ~1, max(0, min(y1 + 1, height)) & ~1
        if x1 <= x0 or y1 <= y0:
            return
        fill_rect(frame.image, self._format, (x0, y0, x1, y1), self._colours[rgb])

    def _paint(self, frame: Frame, text: str, scale: int, x: int, y: int, rgb: tuple[int, int, int]) -> None:
        """The lit pixels of the text at (x, y), clipped to the picture; in I420 the luma only (white
        text on the grey backing needs no colour). Masks are kept on the device per text and size,
        and written with `torch.where`: no host round trip per face on a GPU."""
        image, colour = frame.image, self._colours[rgb]
        key = (text, scale)
        lit = self._masks.get(key)
        if lit is None:
            lit = self._masks[key] = torch.from_numpy(text_mask(text, scale)).to(image.device)
            if len(self._masks) > MASKS_KEPT:
                self._masks.pop(next(iter(self._masks)))
        width, height = self._size
        h, w = min(lit.shape[0], height - y), min(lit.shape[1], width - x)
        if h <= 0 or w <= 0:
            return
        lit = lit[:h, :w]
        if self._format is PixelFormat.RGB24:
            region = image[y : y + h, x : x + w]
            region.copy_(torch.where(lit[..., None], colour, region))
        else:
            region = i420_planes(image)[0][y : y + h, x : x + w]
            region.copy_(torch.where(lit, torch.tensor(colour[0], dtype=region.dtype, device=region.device), region))
