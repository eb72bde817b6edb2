"""Audio kernels: meters and mixing (Triton), gain and limiter (CuPy), each against its torch reference.

Tolerances, float32: meters within 1e-5 relative (sums in a different order); mix and
gain within 1e-6 absolute, except that tanh computed through exp (Triton) may differ by 2e-6.
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels import (
    audio,
    audio_cupy,
    audio_triton,
    ops,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def noise(*shape: int, seed: int, scale: float = 0.5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator) * 2 - 1) * scale


@pytest.mark.parametrize("shape", [(1, 1), (2, 533), (3, 2, 1601), (4, 2048), (0, 10), (2, 0)])
def test_levels_match_the_reference(shape):
    samples = noise(*shape, seed=sum(shape))
    want_rms, want_peak = audio.levels(samples)
    got_rms, got_peak = audio_triton.levels(samples.to(DEVICE))
    assert got_rms.shape == want_rms.shape == shape[:-1]
    assert torch.allclose(got_rms.cpu(), want_rms, rtol=1e-5, atol=1e-7)
    assert torch.equal(got_peak.cpu(), want_peak)


def test_levels_of_known_signals():
    t = torch.arange(48000, dtype=torch.float32) / 48000
    sine = 0.5 * torch.sin(2 * math.pi * 440 * t)
    rms, peak = audio.levels(torch.stack((sine, torch.zeros_like(sine), torch.full_like(sine, -0.25))))
    assert rms.tolist() == pytest.approx([0.5 / math.sqrt(2), 0.0, 0.25], abs=1e-4)
    assert peak.tolist() == pytest.approx([0.5, 0.0, 0.25], abs=1e-4)


@pytest.mark.parametrize("shape", [(1,), (2, 1599), (3, 4097)])
def test_mix_matches_the_reference(shape):
    first, second = noise(*shape, seed=1, scale=0.9), noise(*shape, seed=2, scale=0.9)
    want = audio.mix(first, second, gain_first=0.8, gain_second=0.7)
    got = audio_triton.mix(first.to(DEVICE), second.to(DEVICE), gain_first=0.8, gain_second=0.7)
    assert torch.allclose(got.cpu(), want, atol=2e-6)


def test_limiter_never_passes_the_ceiling_and_leaves_quiet_samples_alone():
    loud = torch.linspace(-8, 8, 10001)
    limited = audio.soft_limit(loud, threshold=0.8, ceiling=1.0)
    assert float(limited.abs().max()) <= 1.0
    quiet = loud.abs() <= 0.8
    assert torch.equal(limited[quiet], loud[quiet])
    assert torch.all(torch.diff(limited) >= 0)  # monotonic: no fold-over
    step = float(loud[1] - loud[0])
    slope = torch.diff(limited) / step  # continuous slope at the threshold: no click
    assert float(slope.max()) <= 1.0 + 1e-3


def test_gain_in_db():
    samples = torch.full((4,), 0.1)
    assert audio.gain_limit(samples, 6.0206).tolist() == pytest.approx([0.2] * 4, abs=1e-5)
    assert audio.gain_limit(samples, -20.0).tolist() == pytest.approx([0.01] * 4, abs=1e-6)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device for CuPy; its torch reference is tested beside it"
)
def test_cupy_gain_limit_matches_the_reference_and_shares_memory():
    from pipeline.device import cupy_module

    if cupy_module() is None:
        pytest.skip("CuPy cannot run with this driver")
    samples = noise(2, 4801, seed=3, scale=1.0)
    want = audio.gain_limit(samples, 4.0)
    got = audio_cupy.gain_limit(samples.cuda(), 4.0)
    assert got.device.type == "cuda"
    assert torch.allclose(got.cpu(), want, atol=1e-6)


def test_cupy_gain_limit_refuses_a_cpu_tensor():
    with pytest.raises(ValueError, match="CUDA tensor"):
        audio_cupy.gain_limit(torch.zeros(4), 0.0)


def test_dispatch_takes_the_references_on_cpu():
    samples = noise(2, 100, seed=4)
    assert torch.equal(ops.gain_limit(samples, 3.0), audio.gain_limit(samples, 3.0))
    assert torch.equal(ops.levels(samples)[0], audio.levels(samples)[0])
    assert torch.equal(ops.mix(samples, samples), audio.mix(samples, samples))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: audio.mix(torch.zeros(3), torch.zeros(4)), "one shape"),
        (lambda: audio_triton.mix(torch.zeros(3), torch.zeros(4)), "one shape"),
        (lambda: audio.soft_limit(torch.zeros(3), threshold=1.0, ceiling=0.5), "threshold < ceiling"),
        (lambda: audio.gain_limit(torch.zeros(3), float("inf")), "finite"),
    ],
)
def test_bad_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
