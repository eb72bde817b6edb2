"""The per-frame operations stages call: each runs as a kernel on CUDA tensors, as its torch reference elsewhere."""

from __future__ import annotations

from kernels import audio, colour, prepare
from kernels import composite as composite_module
from kernels.dispatch import Dispatched

i420_to_rgb = Dispatched(colour.i420_to_rgb, "kernels.colour_triton:i420_to_rgb")
nv12_to_rgb = Dispatched(colour.nv12_to_rgb, "kernels.colour_triton:nv12_to_rgb")
rgb_to_i420 = Dispatched(colour.rgb_to_i420, "kernels.colour_triton:rgb_to_i420")
rgb_to_nv12 = Dispatched(colour.rgb_to_nv12, "kernels.colour_triton:rgb_to_nv12")
prepare_input = Dispatched(prepare.prepare_input, "kernels.prepare_triton:prepare_input")
composite = Dispatched(composite_module.composite, "kernels.composite_triton:composite")
levels = Dispatched(audio.levels, "kernels.audio_triton:levels")
mix = Dispatched(audio.mix, "kernels.audio_triton:mix")
gain_limit = Dispatched(audio.gain_limit, "kernels.audio_cupy:gain_limit")
