"""Lower precisions keep the ports' answers: the bounds `models.precision` states, held on the fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.fer import load_fer
from models.mtcnn import load_mtcnn
from models.precision import input_dtype, with_precision

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(("precision", "bound"), [("fp16", 0.0065), ("bf16", 0.02)])
def test_expression_model_in_half_precision(precision, bound):
    reference = np.load(FIXTURES / "fer_keras_reference.npz")
    x = (torch.from_numpy(reference["inputs"]).float()[:, None] / 255.0 - 0.5) * 2.0
    full = load_fer()
    model = with_precision(full, precision)
    assert next(full.parameters()).dtype == torch.float32  # the original is left as it was
    with torch.no_grad():
        probs = model(x.to(input_dtype(precision))).float().numpy()
    assert np.abs(probs - reference["probs"]).max() <= bound
    assert (probs.argmax(1) == reference["probs"].argmax(1)).all()


def test_detector_with_int8_dense_layers():
    pytest.importorskip("skimage", reason="the reference images come from scikit-image")
    from models.record_mtcnn_reference import reference_images

    reference = np.load(FIXTURES / "mtcnn_reference.npz")
    detector = with_precision(load_mtcnn(), "int8")
    for name, image in reference_images().items():
        faces = detector.detect(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        assert len(faces) == len(reference[f"{name}_boxes"]), name
        assert np.abs(faces.boxes.numpy() - reference[f"{name}_boxes"]).max(initial=0) <= 2.0  # px (1.6 measured)
        assert np.abs(faces.scores.numpy() - reference[f"{name}_scores"]).max(initial=0) <= 1e-4


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision"):
        with_precision(load_fer(), "fp8")
