#!/usr/bin/env python3
"""Per-frame kernels against a plain copy of the same bytes, measured in the same run.

On a GPU: each Triton kernel on a 1080p frame, its achieved bandwidth (bytes read + written
per second) against a device-to-device copy of as many bytes (target: at least 70% of copy
bandwidth, since these kernels are memory-bound), and the torch reference on the GPU beside it.
On a CPU: the torch reference's time per 720p frame (what a CPU run pays), against a copy.

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


def cases(width: int, height: int, device: torch.device) -> list[tuple[str, torch.Tensor, int, Callable, Callable]]:
    """(name, input, output bytes, reference, kernel or None) for each colour conversion."""
    generator = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator).to(device)
    yuv = torch.randint(0, 256, (height * 3 // 2, width), dtype=torch.uint8, generator=generator).to(device)
    kernels = None
    if device.type == "cuda":
        from kernels import colour_triton as kernels
    rows = []
    for name, data, out_bytes in (
        ("i420_to_rgb", yuv, rgb.numel()),
        ("nv12_to_rgb", yuv, rgb.numel()),
        ("rgb_to_i420", rgb, yuv.numel()),
        ("rgb_to_nv12", rgb, yuv.numel()),
    ):
        kernel = getattr(kernels, name) if kernels is not None else None
        rows.append((name, data, out_bytes, getattr(colour, name), kernel))
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
    header = f"{'kernel':<14}{'ms/frame':>10}{'GB/s':>8}{'vs copy':>9}{'reference ms':>14}{'speed-up':>10}"
    print(f"{width}x{height} on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'})")
    print(header)
    for label, data, out_bytes, reference, kernel in cases(width, height, device):
        moved = data.numel() + out_bytes  # bytes read + written, uint8
        source = torch.empty(moved, dtype=torch.uint8, device=device)
        target = torch.empty_like(source)
        copy_ms = timed_ms(lambda s=source, t=target: t.copy_(s), device, args.repeats)
        reference_ms = timed_ms(lambda r=reference, d=data: r(d), device, max(5, args.repeats // 10))
        ms = timed_ms(lambda k=kernel, d=data: k(d), device, args.repeats) if kernel is not None else reference_ms
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
            f"{label:<14}{ms:>10.3f}{gb_s:>8.1f}{row['copy_fraction']:>9.0%}{reference_ms:>14.3f}"
            f"{reference_ms / ms:>9.1f}x"
        )
    path = "Triton kernels" if device.type == "cuda" else "torch reference (the CPU path)"
    print(f"timed: {path}; 'vs copy' is achieved bandwidth over a copy of as many bytes (target >= 70% on GPU)")
    print(json.dumps({"device": str(device), "size": f"{width}x{height}", "kernels": results}))


if __name__ == "__main__":
    main()
