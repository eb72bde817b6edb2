"""Triton and CuPy kernels for per-frame work, each beside a plain torch reference."""
