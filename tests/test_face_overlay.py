"""The face overlay: each face's box, its crop and its label drawn in the frame's own layout."""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import torch

from kernels.colour import i420_to_rgb, rgb_to_i420
from pipeline.config import load_config
from pipeline.frames import Frame
from pipeline.graph import build_graph
from pipeline.io.base import StreamInfo
from pipeline.pixels import PixelFormat
from pipeline.ringbuffer import RingBuffer
from pipeline.stage import StageContext
from pipeline.stages.face_overlay import LABEL_RGB, FaceOverlay, FaceOverlayOptions, text_mask

WIDTH, HEIGHT = 320, 240
FACE = {
    "track": 1,
    "box": [100.0, 80.0, 180.0, 180.0],
    "crop": [84.0, 66.0, 196.0, 178.0],
    "label": "happy",
    "probs": {
        "angry": 0.01,
        "disgust": 0.0,
        "fear": 0.01,
        "happy": 0.93,
        "sad": 0.01,
        "surprise": 0.02,
        "neutral": 0.02,
    },
}


def drawn(pixel_format: PixelFormat, faces: list[dict]) -> tuple[np.ndarray, dict]:
    """The RGB picture after the stage drew `faces` on a mid-grey frame, and its annotation."""
    device = torch.device("cpu")
    info = StreamInfo(WIDTH, HEIGHT, Fraction(30), Fraction(1, 30), pixel_format=pixel_format)
    stage = FaceOverlay("faces", options=FaceOverlayOptions())
    stage.setup(StageContext.standalone(stage, device, stream=info))
    grey = torch.full((HEIGHT, WIDTH, 3), 90, dtype=torch.uint8)
    ring = RingBuffer(1, info.frame_shape)
    lease = ring.try_acquire()
    lease.tensor.copy_(grey if pixel_format is PixelFormat.RGB24 else rgb_to_i420(grey))
    frame = Frame(0, 0, Fraction(1, 30), time.monotonic_ns(), lease)
    frame.annotations["emotion"] = {"faces": faces}
    record = stage.compute(frame)
    image = frame.image.clone()
    frame.release()
    rgb = image if pixel_format is PixelFormat.RGB24 else i420_to_rgb(image)
    return rgb.numpy().astype(int), record


def test_the_box_crop_and_label_are_drawn_in_the_labels_colour_in_either_layout():
    for pixel_format in (PixelFormat.YUV420P, PixelFormat.RGB24):
        rgb, record = drawn(pixel_format, [FACE])
        assert record == {"faces": 1}
        green = np.array(LABEL_RGB["happy"])
        assert np.abs(rgb[130, 100] - green).max() <= 12, pixel_format  # the box's left edge
        assert np.abs(rgb[130, 84] - green).max() <= 12, pixel_format  # the crop's left edge
        assert np.abs(rgb[130, 140] - 90).max() <= 3  # inside the face: untouched
        label = rgb[40:80, 100:200]  # above the box: white text on the dark backing
        assert (label.min(axis=2) > 200).sum() > 50 and (label.max(axis=2) < 40).sum() > 50


def test_no_faces_draws_nothing_and_text_uses_the_built_in_font():
    rgb, record = drawn(PixelFormat.YUV420P, [])
    assert record == {"faces": 0} and np.abs(rgb - 90).max() <= 3
    mask = text_mask("happy 93%", 2)
    assert mask.shape == (14, 2 * (9 * 6 - 1)) and mask.any()


def test_the_annotated_config_draws_the_faces_after_the_readers_and_before_the_avatar():
    """After every stage that reads the camera's picture; before the avatar, whose side layout moves
    that picture aside (boxes drawn after it would land beside their faces)."""
    graph = build_graph(load_config("annotated"))
    assert graph.nodes["faces"].spec.type == "face_overlay"
    assert set(graph.nodes["faces"].spec.after) == {"emotion", "frame_stats"}
    assert "faces" in graph.nodes["avatar"].spec.after
