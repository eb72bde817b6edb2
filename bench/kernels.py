#!/usr/bin/env python3
"""Per-frame kernels against a plain copy of the same bytes, measured in the same run.

On a GPU: each kernel (Triton; CuPy for gain_limit) on a 1080p frame, its achieved bandwidth
(bytes read + written per second) against a device-to-device copy of as many bytes (target: at
least 70% of copy bandwidth for the memory-bound ones), and the torch reference on the GPU
beside it. On a CPU: the torch reference's time per 720p frame (what a CPU run pays) against a
copy of as many bytes. Audio kernels work on one frame's chunk (1600 samples, stereo).

    python bench/kernels.py [--repeats 50] [--device auto|cpu|cuda]

Last line: one JSON object {"device", "size", "kernels": {name: {"ms", "gb_s", "copy_fraction", ...}}}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from kernels import colour

SIZES = {"cuda": (1920, 1080), "cpu": (1280, 720)}  # (width, height) per device


def timed_ms(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median milliseconds per call, after a warm-up (which also compiles Triton kernels)."""
    for _ in range(3):
        run()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            run()
            samples.append((time.perf_counter() - began) * 1e3)
    return statistics.median(samples)


def cases(width: int, height: int, device: torch.device) -> list[tuple[str, int, Callable, Callable | None]]:
    """(name, bytes read + written, reference call, kernel call or None) for each per-frame kernel."""
    from kernels import audio, composite, prepare

    generator = torch.Generator().manual_seed(0)

    def random_u8(*shape: int) -> torch.Tensor:
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator).to(device)

    rgb = random_u8(height, width, 3)
    yuv = random_u8(height * 3 // 2, width)
    avatar = random_u8(256, 256, 4)
    faces = torch.tensor([[100.0, 80.0, 260.0, 240.0]] * 8, device=device)  # 8 faces of 160×160
    chunk = (torch.rand(2, 48000 // 30, generator=generator) * 2 - 1).to(device)  # one frame of 48 kHz stereo
    fast: Any = None
    if device.type == "cuda":
        from kernels import audio_cupy, audio_triton, colour_triton, composite_triton, prepare_triton

        fast = {
            "colour": colour_triton,
            "prepare": prepare_triton,
            "composite": composite_triton,
            "audio": audio_triton,
            "cupy": audio_cupy,
        }
    detector = {"layout": "nv12", "size": (320, 320), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    face = {"layout": "nv12", "size": (112, 112), "boxes": faces, "gray": True, "dtype": torch.float16}
    placed = {"layout": "nv12", "x": width - 300, "y": height - 300, "scale": 1.0}
    rows: list[tuple[str, int, Callable, Callable | None]] = []
    for name, moved, reference in (
        ("i420_to_rgb", yuv.numel() + rgb.numel(), lambda: colour.i420_to_rgb(yuv)),
        ("nv12_to_rgb", yuv.numel() + rgb.numel(), lambda: colour.nv12_to_rgb(yuv)),
        ("rgb_to_i420", yuv.numel() + rgb.numel(), lambda: colour.rgb_to_i420(rgb)),
        ("rgb_to_nv12", yuv.numel() + rgb.numel(), lambda: colour.rgb_to_nv12(rgb)),
        # Whole frame to a 320×320 detector input (NCHW float32): the frame read once, the input written.
        ("detector_input", yuv.numel() + 3 * 320 * 320 * 4, lambda: prepare.prepare_input(yuv, **detector)),
        # Eight 160×160 faces to 112×112 gray float16: only the pixels around the faces are read.
        ("face_inputs", 8 * (160 * 160 * 3 // 2 + 112 * 112 * 2), lambda: prepare.prepare_input(yuv, **face)),
        # A 256×256 RGBA avatar blended into the frame's NV12 planes, in place.
        ("composite", 2 * 256 * 256 * 3 // 2 + 256 * 256 * 4, lambda: composite.composite(yuv, avatar, **placed)),
        ("levels", chunk.numel() * 4, lambda: audio.levels(chunk)),
        ("mix", chunk.numel() * 12, lambda: audio.mix(chunk, chunk, gain_first=0.5)),
        ("gain_limit", chunk.numel() * 8, lambda: audio.gain_limit(chunk, 3.0)),
    ):
        call = None
        if fast is not None:
            call = {
                "i420_to_rgb": lambda: fast["colour"].i420_to_rgb(yuv),
                "nv12_to_rgb": lambda: fast["colour"].nv12_to_rgb(yuv),
                "rgb_to_i420": lambda: fast["colour"].rgb_to_i420(rgb),
                "rgb_to_nv12": lambda: fast["colour"].rgb_to_nv12(rgb),
                "detector_input": lambda: fast["prepare"].prepare_input(yuv, **detector),
                "face_inputs": lambda: fast["prepare"].prepare_input(yuv, **face),
                "composite": lambda: fast["composite"].composite(yuv, avatar, **placed),
                "levels": lambda: fast["audio"].levels(chunk),
                "mix": lambda: fast["audio"].mix(chunk, chunk, gain_first=0.5),
                "gain_limit": lambda: fast["cupy"].gain_limit(chunk, 3.0),
            }[name]
        rows.append((name, moved, reference, call))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per kernel; the median is reported")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    args = parser.parse_args()
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    width, height = SIZES[device.type]
    results: dict[str, dict[str, float]] = {}
    header = f"{'kernel':<16}{'ms/frame':>10}{'GB/s':>8}{'vs copy':>9}{'reference ms':>14}{'speed-up':>10}"
    print(f"{width}x{height} on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'})")
    print(header)
    for label, moved, reference, kernel in cases(width, height, device):
        source = torch.empty(moved, dtype=torch.uint8, device=device)
        target = torch.empty_like(source)
        copy_ms = timed_ms(lambda s=source, t=target: t.copy_(s), device, args.repeats)
        reference_ms = timed_ms(reference, device, max(5, args.repeats // 10))
        ms = timed_ms(kernel, device, args.repeats) if kernel is not None else reference_ms
        gb_s = moved / (ms * 1e-3) / 1e9
        copy_gb_s = moved / (copy_ms * 1e-3) / 1e9
        row = {
            "ms": round(ms, 4),
            "gb_s": round(gb_s, 2),
            "copy_gb_s": round(copy_gb_s, 2),
            "copy_fraction": round(gb_s / copy_gb_s, 3),
            "reference_ms": round(reference_ms, 4),
        }
        results[label] = row
        print(
            f"{label:<16}{ms:>10.3f}{gb_s:>8.1f}{row['copy_fraction']:>9.0%}{reference_ms:>14.3f}"
            f"{reference_ms / ms:>9.1f}x"
        )
    path = "Triton kernels" if device.type == "cuda" else "torch reference (the CPU path)"
    print(f"timed: {path}; 'vs copy' is achieved bandwidth over a copy of as many bytes (target >= 70% on GPU)")
    print(json.dumps({"device": str(device), "size": f"{width}x{height}", "kernels": results}))


if __name__ == "__main__":
    main()
