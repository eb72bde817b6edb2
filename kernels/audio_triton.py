"""Triton kernels for `kernels.audio`: level meters (one program per row) and mixing with the limiter.

The meters read each sample once and keep the running sum of squares and the peak in
registers; mixing reads both streams once and writes the limited sum once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.audio import DEFAULT_CEILING, DEFAULT_THRESHOLD, check_limiter, check_mix

BLOCK = 1024  # samples per step


@triton.jit
def _levels_kernel(src, rms, peak, n, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    squares = tl.zeros((BLOCK,), dtype=tl.float32)
    highest = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n, BLOCK):
        at = start + tl.arange(0, BLOCK)
        x = tl.load(src + row * n + at, mask=at < n, other=0.0).to(tl.float32)
        squares += x * x
        highest = tl.maximum(highest, tl.abs(x))
    tl.store(rms + row, tl.sqrt(tl.sum(squares, axis=0) / n))
    tl.store(peak + row, tl.max(highest, axis=0))


@triton.jit
def _soft_limit(y, threshold, ceiling):
    span = ceiling - threshold
    magnitude = tl.abs(y)
    z = (magnitude - threshold) / span
    tanh = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)  # z ≥ 0 wherever it is used
    bent = threshold + span * tanh
    return tl.where(magnitude > threshold, tl.where(y < 0, -bent, bent), y)


@triton.jit
def _mix_kernel(first, second, out, count, gain_first, gain_second, threshold, ceiling, BLOCK: tl.constexpr):
    at = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = at < count
    a = tl.load(first + at, mask=inside, other=0.0).to(tl.float32)
    b = tl.load(second + at, mask=inside, other=0.0).to(tl.float32)
    tl.store(out + at, _soft_limit(a * gain_first + b * gain_second, threshold, ceiling), mask=inside)


def levels(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """As `kernels.audio.levels`."""
    n = samples.shape[-1]
    rows_shape = samples.shape[:-1]
    rms = torch.zeros(rows_shape, dtype=torch.float32, device=samples.device)
    peak = torch.zeros(rows_shape, dtype=torch.float32, device=samples.device)
    rows = rms.numel()
    if n == 0 or rows == 0:
        return rms, peak
    flat = samples.reshape(rows, n).to(torch.float32).contiguous()
    _levels_kernel[(rows,)](flat, rms, peak, n, BLOCK=BLOCK)
    return rms, peak


def mix(
    first: torch.Tensor,
    second: torch.Tensor,
    *,
    gain_first: float = 1.0,
    gain_second: float = 1.0,
    threshold: float = DEFAULT_THRESHOLD,
    ceiling: float = DEFAULT_CEILING,
) -> torch.Tensor:
    """As `kernels.audio.mix`."""
    check_mix(first, second)
    check_limiter(threshold, ceiling)
    a = first.to(torch.float32).contiguous()
    b = second.to(torch.float32).contiguous()
    out = torch.empty_like(a)
    if out.numel():
        grid = (triton.cdiv(out.numel(), BLOCK),)
        _mix_kernel[grid](a, b, out, out.numel(), gain_first, gain_second, threshold, ceiling, BLOCK=BLOCK)
    return out
