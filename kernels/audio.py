"""Audio per chunk: level meters, gain with a soft limiter, and mixing two streams.

These are the torch references; `kernels/audio_triton.py` (meters, mixing) and
`kernels/audio_cupy.py` (gain and limiter, through CuPy, zero-copy via DLPack) compute the
same on CUDA tensors. Samples are float32 in −1..1, shaped (…, n): the last axis is time.

The limiter is transparent below `threshold` and bends smoothly above it so no sample ever
exceeds `ceiling`: |y| ↦ t + (c − t)·tanh((|y| − t)/(c − t)) for |y| > t. Its slope is 1 at
the threshold, so the bend is inaudible as a click, unlike a hard clip.
"""

from __future__ import annotations

import math

import torch

DEFAULT_THRESHOLD = 0.8  # linear; where the limiter starts to bend
DEFAULT_CEILING = 1.0  # linear; no output sample goes past it


def levels(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RMS and peak of each row over its last axis: (…, n) → two (…) tensors; 0 for empty rows."""
    if samples.shape[-1] == 0:
        zeros = torch.zeros(samples.shape[:-1], dtype=torch.float32, device=samples.device)
        return zeros, zeros.clone()
    x = samples.to(torch.float32)
    return x.square().mean(dim=-1).sqrt(), x.abs().amax(dim=-1)


def check_limiter(threshold: float, ceiling: float) -> None:
    if not 0.0 < threshold < ceiling:
        raise ValueError(f"need 0 < threshold < ceiling, got threshold {threshold} and ceiling {ceiling}")


def soft_limit(y: torch.Tensor, threshold: float = DEFAULT_THRESHOLD, ceiling: float = DEFAULT_CEILING) -> torch.Tensor:
    check_limiter(threshold, ceiling)
    span = ceiling - threshold
    magnitude = y.abs()
    bent = threshold + span * torch.tanh((magnitude - threshold) / span)
    return torch.where(magnitude > threshold, torch.sign(y) * bent, y)


def gain_limit(
    samples: torch.Tensor,
    gain_db: float,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    ceiling: float = DEFAULT_CEILING,
) -> torch.Tensor:
    """Samples × 10^(gain_db/20), then the soft limiter. Returns a new float32 tensor."""
    return soft_limit(samples.to(torch.float32) * db_to_linear(gain_db), threshold, ceiling)


def mix(
    first: torch.Tensor,
    second: torch.Tensor,
    *,
    gain_first: float = 1.0,
    gain_second: float = 1.0,
    threshold: float = DEFAULT_THRESHOLD,
    ceiling: float = DEFAULT_CEILING,
) -> torch.Tensor:
    """gain_first·first + gain_second·second (linear gains), soft-limited. Same shapes."""
    check_mix(first, second)
    summed = first.to(torch.float32) * gain_first + second.to(torch.float32) * gain_second
    return soft_limit(summed, threshold, ceiling)


def check_mix(first: torch.Tensor, second: torch.Tensor) -> None:
    if first.shape != second.shape:
        raise ValueError(f"mix needs two streams of one shape, got {tuple(first.shape)} and {tuple(second.shape)}")


def db_to_linear(gain_db: float) -> float:
    if not math.isfinite(gain_db):
        raise ValueError(f"gain must be a finite number of dB, got {gain_db}")
    return 10.0 ** (gain_db / 20.0)
