"""Lower-precision copies of a model, for when the scheduler trades accuracy for time.

- `fp16` / `bf16`: every weight and activation in that type (on CUDA; on CPU torch runs them
  too, but they are rarely faster there).
- `int8`: dynamic quantization of the `nn.Linear` layers (weights int8, activations quantized
  per batch), CPU only. It is what torch offers without calibration data; convolutions stay
  fp32, so it helps models with large dense layers (MTCNN's R-Net and O-Net) and leaves
  all-convolutional ones (mini-Xception) as they are.

Measured on the ports' fixtures (`tests/test_models_precision.py` holds these bounds):
mini-Xception (its batch norms folded into the convolutions) fp16 moves class probabilities by
0.0015 on an AVX2 AMD EPYC (before the folding 0.0050 on one x86 CPU and 0.0059 on an AVX-512
EPYC: oneDNN picks its half-precision kernels by instruction set, so they round differently;
the test allows 0.0065), bf16 by 0.016 (0.015 unfolded; the test allows 0.02), with the same
top label on every fixture face; MTCNN int8
moves boxes by 1.6 px (the test allows 2) and scores by 4e-5, with the same faces found.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32}


def with_precision(model: nn.Module, precision: str) -> nn.Module:
    """`model` itself for fp32, else a converted copy (the original is left as it was)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return model
    if precision == "int8":
        device = next(model.parameters()).device
        if device.type != "cpu":
            raise ValueError(f"int8 dynamic quantization runs on the CPU, not {device}")
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # torch marks its quantized tensor types for a future change
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    return copy.deepcopy(model).to(DTYPES[precision])


def input_dtype(precision: str) -> torch.dtype:
    """The type inputs must have for a model at `precision`."""
    return DTYPES[precision]
