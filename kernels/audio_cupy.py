"""Gain and soft limiter through CuPy, on torch tensors without a copy: the DLPack handoff the design promises.

The input and an output tensor torch allocates are viewed as CuPy arrays (`cupy.from_dlpack`,
no copy), and an `ElementwiseKernel` reads one and writes the other on torch's current CUDA
stream, so it is ordered with the torch work around it and the result is a plain tensor.
CuPy is imported on first call, so this module imports on any machine; it runs only where
CuPy can reach a GPU.
"""

from __future__ import annotations

from typing import Any

import torch

from kernels.audio import DEFAULT_CEILING, DEFAULT_THRESHOLD, check_limiter, db_to_linear

_SOURCE = """
    float y = x * gain;
    float magnitude = fabsf(y);
    if (magnitude > threshold) {
        float span = ceiling - threshold;
        float bent = threshold + span * tanhf((magnitude - threshold) / span);
        y = copysignf(bent, y);
    }
    out = y;
"""
_kernel: Any = None


def _gain_limit_kernel() -> Any:
    global _kernel
    if _kernel is None:
        import cupy

        _kernel = cupy.ElementwiseKernel(
            "float32 x, float32 gain, float32 threshold, float32 ceiling", "float32 out", _SOURCE, "gain_limit"
        )
    return _kernel


def gain_limit(
    samples: torch.Tensor,
    gain_db: float,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    ceiling: float = DEFAULT_CEILING,
) -> torch.Tensor:
    """As `kernels.audio.gain_limit`, on a CUDA tensor."""
    import cupy

    check_limiter(threshold, ceiling)
    gain = db_to_linear(gain_db)
    if samples.device.type != "cuda":
        raise ValueError(f"gain_limit through CuPy needs a CUDA tensor, got one on {samples.device}")
    source = samples.to(torch.float32).contiguous()
    out = torch.empty_like(source)  # torch's allocator owns the result; CuPy writes into it
    if out.numel():
        with (
            cupy.cuda.Device(source.device.index),
            cupy.cuda.ExternalStream(torch.cuda.current_stream(source.device).cuda_stream),
        ):
            _gain_limit_kernel()(
                cupy.from_dlpack(source),
                cupy.float32(gain),
                cupy.float32(threshold),
                cupy.float32(ceiling),
                cupy.from_dlpack(out),
            )
    return out
