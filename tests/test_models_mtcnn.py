"""MTCNN in plain torch: the same detections as facenet-pytorch's own code, and a face the expression model reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kernels import ops
from models.fer import LABELS, load_fer
from models.mtcnn import WEIGHTS, load_mtcnn, nms, square

pytest.importorskip("skimage", reason="the reference images come from scikit-image")
from models.record_mtcnn_reference import reference_images

FIXTURE = Path(__file__).parent / "fixtures" / "mtcnn_reference.npz"


@pytest.fixture(scope="module")
def detector():
    return load_mtcnn()


@pytest.fixture(scope="module")
def images():
    return {
        name: torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        for name, image in reference_images().items()
    }


@pytest.mark.parametrize("name", ["astronaut", "two_faces", "half", "no_face"])
def test_port_finds_what_facenet_pytorch_finds(detector, images, name):
    reference = np.load(FIXTURE)
    faces = detector.detect(images[name])
    want_boxes, want_scores = reference[f"{name}_boxes"], reference[f"{name}_scores"]
    assert len(faces) == len(want_boxes)
    assert np.abs(faces.boxes.numpy() - want_boxes).max(initial=0) <= 1.0  # px
    assert np.abs(faces.scores.numpy() - want_scores).max(initial=0) <= 1e-4
    assert np.abs(faces.landmarks.numpy() - reference[f"{name}_landmarks"]).max(initial=0) <= 1.0


def test_the_astronaut_is_found_and_read_as_happy(detector, images):
    """Detector, the fused crop kernel and the expression model, end to end on a real face."""
    image = images["astronaut"].permute(1, 2, 0).contiguous()  # H×W×3, as a frame's RGB slot
    faces = detector.detect(images["astronaut"])
    assert len(faces) == 1 and float(faces.scores[0]) > 0.99
    x0, y0, x1, y1 = faces.boxes[0].tolist()
    assert 150 < (x0 + x1) / 2 < 300 and 50 < (y0 + y1) / 2 < 200  # the face, not the flag or the suit
    batch = ops.prepare_input(image, layout="rgb", size=(64, 64), boxes=faces.boxes, gray=True, mean=(0.5,), std=(0.5,))
    with torch.no_grad():
        probs = load_fer()(batch)
    assert LABELS[int(probs[0].argmax())] == "happy"


def test_near_a_box_it_finds_the_face_that_moved_from_it_and_nothing_where_none_is(detector, images):
    """detect_near: R-Net and O-Net on a known box and its nudges find the face the full cascade finds."""
    image = images["astronaut"]
    (box,) = detector.detect(image).boxes
    side = float(box[2] - box[0])
    for dx, dy, grow in ((0.0, 0.0, 0.0), (0.25, 0.0, 0.0), (0.0, -0.2, 0.0), (0.1, 0.1, 0.15), (0.0, 0.0, -0.15)):
        moved = box + side * torch.tensor([dx - grow, dy - grow, dx + grow, dy + grow])
        near = detector.detect_near(image, moved[None])
        assert len(near) == 1, (dx, dy, grow)
        assert float((near.boxes[0] - box).abs().max()) <= 0.06 * side  # px, against the full search's
        assert float(near.scores[0]) > 0.99 and near.landmarks.shape == (1, 5, 2)
    assert len(detector.detect_near(image, torch.tensor([[5.0, 400.0, 85.0, 480.0]]))) == 0  # the suit
    assert len(detector.detect_near(image, torch.zeros((0, 4)))) == 0


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]])
    scores = torch.tensor([0.8, 0.9, 0.7, 0.1])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.9).tolist() == [1, 0, 2]  # IoU of 0 and 1 is 0.68: both stay
    inner = torch.tensor([[0.0, 0, 20, 20], [5, 5, 10, 10]])
    assert nms(inner, torch.tensor([0.9, 0.8]), 0.7).tolist() == [0, 1]  # small overlap by union
    assert nms(inner, torch.tensor([0.9, 0.8]), 0.7, by_min=True).tolist() == [0]  # inside: dropped
    assert nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).tolist() == []


def test_square_keeps_the_centre():
    out = square(torch.tensor([[10.0, 20.0, 30.0, 60.0]]))
    assert out.tolist() == [[0.0, 20.0, 40.0, 60.0]]


def test_weights_say_where_they_come_from():
    from safetensors import safe_open

    with safe_open(str(WEIGHTS), "pt") as weights:
        metadata = weights.metadata()
    assert "facenet-pytorch==2.6.0" in metadata["source"] and "MIT" in metadata["source"]
    assert all(len(metadata[f"{name}_sha256"]) == 64 for name in ("pnet", "rnet", "onet"))


def test_a_caller_may_pause_before_each_network_pass_and_gets_the_same_faces(detector, images):
    """`pause` runs before each pyramid level, R-Net and O-Net (where work beside frames lets them go first)."""
    image = images["two_faces"]
    pauses = []
    paused = detector.detect(image, pause=lambda: pauses.append("pass"))
    plain = detector.detect(image)
    height, width = image.shape[1:]
    assert len(pauses) == len(detector.scales(height, width)) + 2
    assert torch.equal(paused.boxes, plain.boxes) and torch.equal(paused.scores, plain.scores)
    pauses.clear()
    near = detector.detect_near(image, plain.boxes, pause=lambda: pauses.append("pass"))
    assert len(pauses) == 2 and len(near) == len(plain)
