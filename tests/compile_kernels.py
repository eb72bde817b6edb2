"""Compile every Triton kernel, in every variant, for a CUDA GPU — on a machine that has none.

Triton's interpreter (what the other kernel tests use on CPU) runs the kernels' Python, so it
cannot catch what only the compiler sees: types that do not lower, constexpr branches that
disagree, ops with no GPU form. This compiles each kernel ahead of time to PTX and a cubin for
the given architecture with Triton's own bundled compiler and ptxas; no driver is needed.

    python tests/compile_kernels.py [--arch 89 --arch 90]

Prints one line per kernel variant and exits non-zero if any fails. Must run without
`TRITON_INTERPRET` set (the tests start it in a clean process).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels import audio_triton, colour_triton, composite_triton, prepare_triton

COLOUR = {"kr": "fp32", "kb": "fp32", "y_offset": "fp32", "y_span": "fp32", "c_span": "fp32"}


def variants():
    """(label, kernel, signature, constexprs) for every kernel and every constexpr combination it is launched with."""
    for kernel, nv12 in itertools.product(
        (colour_triton._yuv420_to_rgb_kernel, colour_triton._rgb_to_yuv420_kernel), (False, True)
    ):
        signature = {"src": "*u8", "dst": "*u8", "height": "i32", "width": "i32", **COLOUR}
        yield kernel, signature, {"NV12": nv12, "BLOCK": colour_triton.BLOCK}
    for layout, gray, out in itertools.product((0, 1, 2), (False, True), ("*fp32", "*fp16")):
        signature = {"src": "*u8", "boxes": "*fp32", "dst": out, "height": "i32", "width": "i32"}
        signature |= {"out_h": "i32", "out_w": "i32", **COLOUR}
        signature |= {name: "fp32" for name in ("scale0", "scale1", "scale2", "shift0", "shift1", "shift2", "fill")}
        yield prepare_triton._prepare_kernel, signature, {"LAYOUT": layout, "GRAY": gray, "BLOCK": prepare_triton.BLOCK}
    placement = {name: "i32" for name in ("over_h", "over_w", "x", "y", "box_w", "box_h")} | {"inv_scale": "fp32"}
    clip = {"r0": "i32", "c0": "i32", "c1": "i32"}
    signature = {"frame": "*u8", "over": "*u8", "width": "i32", **placement, **clip}
    yield composite_triton._composite_rgb_kernel, signature, {"BLOCK": composite_triton.BLOCK}
    for nv12 in (False, True):
        signature = {"frame": "*u8", "over": "*u8", "height": "i32", "width": "i32", **placement, **clip, **COLOUR}
        yield composite_triton._composite_yuv_kernel, signature, {"NV12": nv12, "BLOCK": composite_triton.BLOCK}
    signature = {"src": "*fp32", "rms": "*fp32", "peak": "*fp32", "n": "i32"}
    yield audio_triton._levels_kernel, signature, {"BLOCK": audio_triton.BLOCK}
    signature = {"first": "*fp32", "second": "*fp32", "out": "*fp32", "count": "i32"}
    signature |= {"gain_first": "fp32", "gain_second": "fp32", "threshold": "fp32", "ceiling": "fp32"}
    yield audio_triton._mix_kernel, signature, {"BLOCK": audio_triton.BLOCK}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch",
        type=int,
        action="append",
        help="CUDA compute capability, e.g. 80 (A100), 89 (RTX 4090), 90 (H100); repeatable. Default: 89 and 90",
    )
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET"):
        print("unset TRITON_INTERPRET: the interpreter does not compile", file=sys.stderr)
        return 2
    failures = 0
    for arch, (kernel, signature, constexprs) in itertools.product(args.arch or [89, 90], variants()):
        target = GPUTarget("cuda", arch, 32)
        pointers = ", ".join(f"{k}={v[1:]}" for k, v in signature.items() if k in ("dst",) and v != "*u8")
        settings = ", ".join([f"{k}={v}" for k, v in constexprs.items()] + ([pointers] if pointers else []))
        name = f"sm_{arch} {kernel.fn.__name__}[{settings}]"
        began = time.perf_counter()
        try:
            compiled = triton.compile(
                ASTSource(
                    fn=kernel, signature={**signature, **dict.fromkeys(constexprs, "constexpr")}, constexprs=constexprs
                ),
                target=target,
            )
            assert compiled.asm.get("cubin"), "no cubin"
            print(f"ok    {name} ({time.perf_counter() - began:.2f} s)")
        except Exception as exc:
            failures += 1
            text = str(exc).strip().splitlines()
            print(f"FAIL  {name}: {type(exc).__name__}: {text[0] if text else ''}")
            print("\n".join(text[1:12]), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
