"""MTCNN face detection (P-Net → R-Net → O-Net) in plain torch: boxes, scores and five landmarks.

The networks and weights are facenet-pytorch's (2.6.0, MIT: `facenet_pytorch/data/{pnet,rnet,onet}.pt`),
converted by `models/convert_mtcnn.py` into `models/weights/mtcnn.safetensors`; this module does
not depend on that package or on torchvision. Its non-maximum suppression is written here in
torch. The port is checked against facenet-pytorch's own detector on fixed images
(`tests/fixtures/mtcnn_reference.npz`): boxes within 1 px, scores within 1e-4.

The cascade, for each image:
1. P-Net, fully convolutional, over an image pyramid (smallest face `min_face` px, each level
   `factor` smaller); every 12×12 window above `thresholds[0]` becomes a candidate; NMS per
   level (IoU 0.5), then over all levels (0.7); boxes refined by the regression and squared.
2. R-Net on each candidate resampled to 24×24: above `thresholds[1]`, NMS 0.7, refined, squared.
3. O-Net on 48×48: above `thresholds[2]`, refined, five landmarks; NMS 0.7 by intersection
   over the smaller box, so a box inside another is dropped.
Pixels are RGB in 0..255, normalized to (x − 127.5)/128 before each network.

The networks hold their weights and take their inputs channels-last (N×H×W×C in memory): the
CPU's max-pool kernel is vectorized over channels only in that layout (3–14× faster here than on
planar tensors) and oneDNN's convolutions work in it without reordering, which takes about a
third off a detection on a CPU. Every value stays the same to 2e-5 px; cuDNN
takes the layout natively.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS = Path(__file__).resolve().parent / "weights" / "mtcnn.safetensors"
MIN_FACE = 20  # px: the smallest face the pyramid looks for
FACTOR = 0.709  # each pyramid level's scale over the previous one
THRESHOLDS = (0.6, 0.7, 0.7)  # face probability each stage needs
CELL, STRIDE = 12, 2  # P-Net's window and its step, in pyramid pixels
# `detect_near` tries each known box as it is, moved an eighth of its side each way, and grown
# and shrunk by as much on each side: the proposals P-Net would make around a face that moved a
# little since the box was found.
NUDGES = ((0, 0, 0, 0), (1, 0, 1, 0), (-1, 0, -1, 0), (0, 1, 0, 1), (0, -1, 0, -1), (-1, -1, 1, 1), (1, 1, -1, -1))
NUDGE = 0.125  # of the box's side


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """The same N×C×H×W values laid out N×H×W×C in memory (no copy when they already are)."""
    return x.contiguous(memory_format=torch.channels_last)


class PNet(nn.Module):
    """Proposal network: fully convolutional; per 12×12 window, a face probability and a box regression."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N×4×h×w regression, N×h×w face probability)."""
        x = F.max_pool2d(self.prelu1(self.conv1(channels_last(x))), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)[:, 1]


def _flatten_transposed(x: torch.Tensor) -> torch.Tensor:
    """Flatten in the order the original (Caffe-trained) dense layers expect: W, H, C."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement network on 24×24 crops: face probability and box regression."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N×4 regression, N face probability)."""
        x = F.max_pool2d(self.prelu1(self.conv1(channels_last(x))), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_transposed(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output network on 48×48 crops: face probability, box regression and five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N×4 regression, N×10 landmarks: five x then five y, relative to the box, N face probability)."""
        x = F.max_pool2d(self.prelu1(self.conv1(channels_last(x))), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_transposed(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]


@dataclass
class Faces:
    """One image's detections, best first by O-Net's order after NMS."""

    boxes: torch.Tensor  # K×4 x0, y0, x1, y1 in image pixels
    scores: torch.Tensor  # K
    landmarks: torch.Tensor  # K×5×2 (x, y): eyes, nose, mouth corners

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, *, by_min: bool = False) -> torch.Tensor:
    """Indices of the boxes kept by greedy non-maximum suppression, highest score first.

    Overlap is intersection over union (areas as (x1 − x0)·(y1 − y0)), or with `by_min`
    intersection over the smaller box (areas with the +1 pixel convention of the original).
    A box is dropped when its overlap with a kept one is above `threshold`.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    one = 1.0 if by_min else 0.0
    x0, y0, x1, y1 = boxes.unbind(1)
    areas = (x1 - x0 + one) * (y1 - y0 + one)
    order = torch.argsort(scores, descending=True, stable=True)
    ix0, iy0 = torch.maximum(x0[:, None], x0[None]), torch.maximum(y0[:, None], y0[None])
    ix1, iy1 = torch.minimum(x1[:, None], x1[None]), torch.minimum(y1[:, None], y1[None])
    inter = (ix1 - ix0 + one).clamp(min=0) * (iy1 - iy0 + one).clamp(min=0)
    if by_min:
        overlap = inter / torch.minimum(areas[:, None], areas[None])
    else:
        overlap = inter / (areas[:, None] + areas[None] - inter)
    # The greedy pass is sequential: in NumPy it is one stretch of the interpreter, where a torch
    # op per candidate would hand the interpreter lock back and forth with the frames' threads.
    overlap = (overlap > threshold).cpu().numpy()
    suppressed = np.zeros(len(overlap), dtype=bool)
    keep = []
    for index in order.cpu().tolist():
        if suppressed[index]:
            continue
        keep.append(index)
        suppressed |= overlap[index]
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def square(boxes: torch.Tensor) -> torch.Tensor:
    """Each box grown to a square on its longer side, about the same centre."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x0 = boxes[:, 0] + w * 0.5 - side * 0.5
    y0 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack((x0, y0, x0 + side, y0 + side), dim=1)


def refine(boxes: torch.Tensor, regression: torch.Tensor, *, plus_one: bool = True) -> torch.Tensor:
    """Move each edge by its regression times the box size (R-Net and O-Net count the size +1)."""
    one = 1.0 if plus_one else 0.0
    w = (boxes[:, 2] - boxes[:, 0] + one)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + one)[:, None]
    return boxes + regression * torch.cat((w, h, w, h), dim=1)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125


def crops(image: torch.Tensor, boxes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each box's pixels (clipped to the image, 1-based inclusive as the original) resampled to size×size.

    Returns the crops and a mask of the boxes that had any pixels; empty boxes are skipped.
    """
    height, width = image.shape[1:]
    whole = boxes.trunc().to(torch.int64).cpu()
    x0, y0 = whole[:, 0].clamp(min=1), whole[:, 1].clamp(min=1)
    x1, y1 = whole[:, 2].clamp(max=width), whole[:, 3].clamp(max=height)
    out, usable = [], []
    for a, b, c, d in zip(x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist(), strict=True):
        ok = d > b - 1 and c > a - 1
        usable.append(ok)
        if ok:
            out.append(F.interpolate(image[None, :, b - 1 : d, a - 1 : c], size=(size, size), mode="area"))
    mask = torch.tensor(usable, dtype=torch.bool, device=boxes.device)
    if not out:
        return image.new_zeros((0, 3, size, size)), mask
    return torch.cat(out), mask


class MTCNN(nn.Module):
    """The three networks and the cascade that runs them; `detect` takes RGB images."""

    def __init__(
        self, *, min_face: int = MIN_FACE, factor: float = FACTOR, thresholds: tuple[float, float, float] = THRESHOLDS
    ):
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        self.to(memory_format=torch.channels_last)  # loading weights into the parameters keeps their layout
        self.min_face, self.factor, self.thresholds = min_face, factor, thresholds

    def scales(self, height: int, width: int) -> list[float]:
        scale = 12.0 / self.min_face
        smallest = min(height, width) * scale
        out = []
        while smallest >= CELL:
            out.append(scale)
            scale *= self.factor
            smallest *= self.factor
        return out

    @torch.no_grad()
    def detect(self, image: torch.Tensor, *, pause: Callable[[], None] | None = None) -> Faces:
        """Faces in one 3×H×W RGB image (float or uint8, 0..255), on the networks' device.

        `pause`, if given, is called before each network pass (each level of the pyramid, then
        R-Net, then O-Net): a caller running beside other work can let it go first there."""
        pause = pause or _go_on
        image = image.to(next(self.parameters()).dtype)
        height, width = image.shape[1:]
        boxes = self._propose(image, height, width, pause)
        if len(boxes):
            pause()
            boxes = self._refine(image, boxes)
        if not len(boxes):
            return _no_faces(image)
        pause()
        return self._output(image, boxes)

    @torch.no_grad()
    def detect_near(
        self, image: torch.Tensor, boxes: torch.Tensor, *, pause: Callable[[], None] | None = None
    ) -> Faces:
        """Faces near `boxes` (K×4 image pixels: where faces were a moment ago), without the pyramid.

        Each box, squared, and its `NUDGES` go to R-Net and O-Net as if P-Net had proposed them:
        a face that stayed about where it was is found again, refined and with its landmarks, at a
        small part of a full detection's cost (P-Net over the pyramid is most of that). A face
        that moved further, or that no box was near, is not looked for. `pause` as in `detect`.
        """
        image = image.to(next(self.parameters()).dtype)
        if not len(boxes):
            return _no_faces(image)
        known = square(boxes.to(image))
        side = (known[:, 2] - known[:, 0])[:, None, None] * NUDGE
        nudges = torch.tensor(NUDGES, dtype=image.dtype, device=image.device)
        proposals = (known[:, None, :] + side * nudges[None]).reshape(-1, 4)
        pause = pause or _go_on
        pause()
        found = self._refine(image, proposals)
        if not len(found):
            return _no_faces(image)
        pause()
        return self._output(image, found)

    def _propose(self, image: torch.Tensor, height: int, width: int, pause: Callable[[], None]) -> torch.Tensor:
        """P-Net candidates, squared: K×4."""
        found_boxes, found_scores, found_regression = [], [], []
        for scale in self.scales(height, width):
            pause()
            size = (int(height * scale + 1), int(width * scale + 1))
            regression, probability = self.pnet(normalize(F.interpolate(image[None], size=size, mode="area")))
            where = probability[0] >= self.thresholds[0]
            cells = where.nonzero().to(image.dtype).flip(1)  # (x, y) of each window, pyramid cells
            top_left = ((STRIDE * cells + 1) / scale).floor()
            bottom_right = ((STRIDE * cells + CELL) / scale).floor()
            level_boxes = torch.cat((top_left, bottom_right), dim=1)
            level_scores = probability[0][where]
            keep = nms(level_boxes, level_scores, 0.5)
            found_boxes.append(level_boxes[keep])
            found_scores.append(level_scores[keep])
            found_regression.append(regression[0].permute(1, 2, 0)[where][keep])
        if not found_boxes:
            return image.new_zeros((0, 4))
        boxes, scores, regression = torch.cat(found_boxes), torch.cat(found_scores), torch.cat(found_regression)
        keep = nms(boxes, scores, 0.7)
        return square(refine(boxes[keep], regression[keep], plus_one=False))

    def _refine(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """R-Net's survivors, refined and squared: K×4."""
        pixels, usable = crops(image, boxes, 24)
        boxes = boxes[usable]
        regression, scores = self.rnet(normalize(pixels))
        passed = scores > self.thresholds[1]
        boxes, scores, regression = boxes[passed], scores[passed], regression[passed]
        keep = nms(boxes, scores, 0.7)
        return square(refine(boxes[keep], regression[keep]))

    def _output(self, image: torch.Tensor, boxes: torch.Tensor) -> Faces:
        pixels, usable = crops(image, boxes, 48)
        boxes = boxes[usable]
        regression, points, scores = self.onet(normalize(pixels))
        passed = scores > self.thresholds[2]
        boxes, scores, regression, points = boxes[passed], scores[passed], regression[passed], points[passed]
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        xs = w * points[:, :5] + boxes[:, 0:1] - 1
        ys = h * points[:, 5:] + boxes[:, 1:2] - 1
        landmarks = torch.stack((xs, ys), dim=2)
        boxes = refine(boxes, regression)
        keep = nms(boxes, scores, 0.7, by_min=True)
        return Faces(boxes[keep], scores[keep], landmarks[keep])


def _go_on() -> None:
    """No pause between network passes."""


def _no_faces(image: torch.Tensor) -> Faces:
    return Faces(image.new_zeros((0, 4)), image.new_zeros(0), image.new_zeros((0, 5, 2)))


def load_mtcnn(device: torch.device | str = "cpu", path: Path = WEIGHTS, **settings: object) -> MTCNN:
    """The detector with its converted weights, in eval mode on `device`."""
    from safetensors.torch import load_file

    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; make it with python models/convert_mtcnn.py")
    model = MTCNN(**settings)  # type: ignore[arg-type]
    model.load_state_dict(load_file(str(path)))
    return model.eval().to(device)
