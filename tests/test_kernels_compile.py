"""Every Triton kernel compiles for real GPUs (sm_89, sm_90), checked here without one.

The interpreter-based tests check what the kernels compute; this checks that the compiler
accepts them, in every variant they are launched with.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("compile_kernels.py")


def test_every_kernel_compiles_for_cuda(tmp_path):
    pytest.importorskip("triton.backends.nvidia", reason="this Triton has no CUDA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # compile afresh, and leave no cache behind
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    compiled = [line for line in run.stdout.splitlines() if line.startswith("ok ")]
    assert len(compiled) == 2 * 21, run.stdout  # 21 variants, for two architectures
