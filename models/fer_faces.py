"""The real faces the expression stage is measured on against the original `fer` pipeline.

Only what scikit-image ships, so the pictures are the same wherever they are made, offline:

- **astronaut**: Eileen Collins (NASA, public domain), as she is, mirrored, rotated ±10° and
  ±20°, scaled so her face (as MTCNN boxes it) is about 60, 120 and 250 px tall, cut by the
  picture's left and top edges, darkened and brightened;
- **lfw**: the 100 faces of `skimage.data.lfw_subset()` (Labeled Faces in the Wild, 25×25
  gray), upscaled to 96 and 160 px and placed on a plain mid-grey 320×240 picture.

`models/record_fer_pipeline_reference.py` runs the original pipeline on them once (in an
environment of its own: TensorFlow); the test runs ours on the same pictures and compares.
Plain NumPy and scikit-image, nothing of the pipeline: the recording environment does not
install the project.
"""

from __future__ import annotations

import numpy as np

ASTRONAUT_FACE_PX = 108  # the astronaut's face height in the 512×512 picture, as MTCNN boxes it
ASTRONAUT_FACE_CENTRE = (224.0, 118.0)  # (x, y) px in the 512×512 picture, between the two detectors' boxes
ASTRONAUT_SCALES = (60, 120, 250)  # face heights, px
ROTATIONS = (-20, -10, 10, 20)  # degrees, counter-clockwise
LFW_FACES = 100  # lfw_subset(): 100 faces, then 100 pictures without one
LFW_SIZES = (96, 160)  # px, the face upscaled to this square
LFW_CANVAS = (240, 320)  # rows, columns
LFW_BACKGROUND = 0.5  # plain mid-grey


def _even(picture: np.ndarray) -> np.ndarray:
    """Cropped to an even width and height (4:2:0 video needs them)."""
    rows, cols = picture.shape[:2]
    return picture[: rows - rows % 2, : cols - cols % 2]


def _uint8(picture: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(_even(np.clip(picture * 255.0 + 0.5, 0, 255).astype(np.uint8)))


def astronaut_pictures() -> list[tuple[str, np.ndarray, tuple[float, float, float]]]:
    """(name, picture, (x, y, size) of the face in it)."""
    from skimage import data, transform

    base = data.astronaut().astype(np.float64) / 255.0  # 512×512×3
    cx, cy = ASTRONAUT_FACE_CENTRE
    size = float(ASTRONAUT_FACE_PX)
    pictures = [("astronaut", base, (cx, cy, size)), ("astronaut-mirrored", base[:, ::-1], (511 - cx, cy, size))]
    for angle in ROTATIONS:  # counter-clockwise about the picture's centre, as skimage turns it
        turn = np.radians(angle)
        dx, dy = cx - 255.5, cy - 255.5
        at = (255.5 + dx * np.cos(turn) + dy * np.sin(turn), 255.5 - dx * np.sin(turn) + dy * np.cos(turn), size)
        pictures.append((f"astronaut-rotated{angle:+d}", transform.rotate(base, angle, mode="edge"), at))
    for height in ASTRONAUT_SCALES:
        scale = height / ASTRONAUT_FACE_PX
        picture = transform.rescale(base, scale, channel_axis=2, anti_aliasing=scale < 1)
        pictures.append((f"astronaut-face{height}px", picture, (cx * scale, cy * scale, float(height))))
    # The face at the edge, part of it cut off: the crop reaches past the picture.
    pictures.append(("astronaut-left-edge", base[:, 190:], (cx - 190, cy, size)))
    pictures.append(("astronaut-top-edge", base[80:, :], (cx, cy - 80, size)))
    pictures.append(("astronaut-dark", base * 0.45, (cx, cy, size)))
    pictures.append(("astronaut-bright", base * 0.5 + 0.5, (cx, cy, size)))
    return [(name, _uint8(picture), at) for name, picture, at in pictures]


def lfw_pictures() -> list[tuple[str, np.ndarray, tuple[float, float, float]]]:
    """(name, picture, (x, y, size) of the face in it)."""
    from skimage import data, transform

    faces = data.lfw_subset()[:LFW_FACES]  # 25×25, 0..1
    rows, cols = LFW_CANVAS
    pictures = []
    for size in LFW_SIZES:
        for index, face in enumerate(faces):
            canvas = np.full((rows, cols), LFW_BACKGROUND)
            top, left = (rows - size) // 2, (cols - size) // 2
            canvas[top : top + size, left : left + size] = transform.resize(face, (size, size), order=3)
            at = (left + size / 2, top + size / 2, float(size))
            pictures.append((f"lfw{index:03d}-{size}px", np.repeat(canvas[..., None], 3, axis=2), at))
    return [(name, _uint8(picture), at) for name, picture, at in pictures]


def pictures() -> list[tuple[str, str, np.ndarray]]:
    """(group, name, RGB uint8 H×W×3 with even sides) for every picture, in a fixed order."""
    return [("astronaut", name, p) for name, p, _ in astronaut_pictures()] + [
        ("lfw", name, p) for name, p, _ in lfw_pictures()
    ]


def face_at() -> dict[str, tuple[float, float, float]]:
    """Where each picture's one face is: (x, y) of its centre and its size, px. Each picture holds
    exactly one face, so a detector's box far from it is a false detection, not a face."""
    return {name: at for name, _, at in astronaut_pictures() + lfw_pictures()}


def is_the_face(box: list[float], at: tuple[float, float, float]) -> bool:
    """Whether a box (x0, y0, x1, y1) is on the picture's face: its centre within half the face's size."""
    x, y, size = at
    return abs((box[0] + box[2]) / 2 - x) <= size / 2 and abs((box[1] + box[3]) / 2 - y) <= size / 2
