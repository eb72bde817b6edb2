#!/usr/bin/env python3
"""Record facenet-pytorch's own MTCNN detections on fixed images: the fixture `models.mtcnn` is tested against.

Run in a scratch environment, never the project's. facenet-pytorch 2.6.0 pins an old torch
and torchvision; its detector needs torchvision only for `batched_nms`, so this script runs
the package's own code with the project's torch and a stand-in `torchvision` that provides
`batched_nms` as torchvision documents it (greedy, IoU over areas (x1−x0)·(y1−y0), boxes of
different images never suppress each other, kept indices in decreasing score):

    python -m venv /tmp/fnenv && /tmp/fnenv/bin/pip install torch numpy pillow requests scikit-image
    /tmp/fnenv/bin/pip install --no-deps facenet-pytorch==2.6.0
    /tmp/fnenv/bin/python models/record_mtcnn_reference.py tests/fixtures/mtcnn_reference.npz

Images (made by `reference_images`, which the tests share): the astronaut (scikit-image,
public domain), the astronaut beside its mirror image (two faces), the astronaut at half size,
and a picture with no face.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np

STAND_IN = {
    "torchvision/__init__.py": "",
    "torchvision/transforms/__init__.py": "",
    "torchvision/transforms/functional.py": "",
    "torchvision/ops/__init__.py": "",
    "torchvision/ops/boxes.py": textwrap.dedent(
        """
        import torch

        def batched_nms(boxes, scores, idxs, iou_threshold):
            keep = []
            for image in idxs.unique().tolist():
                members = (idxs == image).nonzero().flatten()
                order = members[scores[members].argsort(descending=True)]
                while len(order):
                    best, order = order[0], order[1:]
                    keep.append(int(best))
                    if not len(order):
                        break
                    b, others = boxes[best], boxes[order]
                    w = (torch.minimum(b[2], others[:, 2]) - torch.maximum(b[0], others[:, 0])).clamp(min=0)
                    h = (torch.minimum(b[3], others[:, 3]) - torch.maximum(b[1], others[:, 1])).clamp(min=0)
                    inter = w * h
                    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
                    order = order[inter / (area(b) + area(others) - inter) <= iou_threshold]
            keep = torch.tensor(keep, dtype=torch.long)
            return keep[scores[keep].argsort(descending=True)] if len(keep) else keep
        """
    ),
}


def reference_images() -> dict[str, np.ndarray]:
    """name → H×W×3 uint8 RGB; deterministic (integer arithmetic only)."""
    from skimage import data

    astronaut = data.astronaut()
    half = astronaut.reshape(256, 2, 256, 2, 3).astype(np.uint16).sum(axis=(1, 3))
    half = ((half + 2) // 4).astype(np.uint8)
    gy, gx = np.mgrid[0:240, 0:320]
    no_face = np.stack(((gx * 255) // 319, (gy * 255) // 239, ((gx + gy) * 255) // 558), axis=-1).astype(np.uint8)
    return {
        "astronaut": astronaut,
        "two_faces": np.concatenate((astronaut, astronaut[:, ::-1]), axis=1),
        "half": half,
        "no_face": no_face,
    }


@contextlib.contextmanager
def stand_in_torchvision() -> Iterator[None]:
    """`torchvision` on the path as the stand-in above, for facenet-pytorch to import."""
    with tempfile.TemporaryDirectory() as shim:
        for name, text in STAND_IN.items():
            (Path(shim) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(shim) / name).write_text(text)
        sys.path.insert(0, shim)
        try:
            yield
        finally:
            sys.path.remove(shim)


def main() -> None:
    out = Path(sys.argv[1])
    with stand_in_torchvision():
        import torch
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
        from facenet_pytorch.models.utils.detect_face import detect_face

        pnet, rnet, onet = PNet().eval(), RNet().eval(), ONet().eval()
        arrays: dict[str, np.ndarray] = {}
        for name, image in reference_images().items():
            with torch.no_grad():  # as facenet-pytorch's MTCNN.detect calls it
                boxes, points = detect_face(image, 20, pnet, rnet, onet, [0.6, 0.7, 0.7], 0.709, "cpu")
            boxes = np.asarray(boxes[0], dtype=np.float32).reshape(-1, 5)
            arrays[f"{name}_boxes"] = boxes[:, :4]
            arrays[f"{name}_scores"] = boxes[:, 4]
            arrays[f"{name}_landmarks"] = np.asarray(points[0], dtype=np.float32).reshape(-1, 5, 2)
            print(name, image.shape, len(boxes), boxes[:, 4].round(4).tolist())
    np.savez_compressed(out, **arrays)


if __name__ == "__main__":
    main()
