"""A pool of scratch tensors, so a frame in steady state allocates nothing new.

Keyed by shape, dtype and device. Each stage gets its own pool: on CUDA a stage's work is
ordered on its own stream, so a tensor handed back is safe to hand out again to that stage.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

Key = tuple[tuple[int, ...], torch.dtype, torch.device]


class ScratchPool:
    """Hands out reusable temporaries inside a `with` block; counts hits and misses."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._free: dict[Key, list[torch.Tensor]] = {}
        self._lock = threading.Lock()  # stages lease from their worker threads
        self.hits = 0
        self.misses = 0

    @contextmanager
    def lease(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
        """A tensor of this shape and dtype, uninitialised, returned to the pool on exit."""
        key: Key = (tuple(shape), dtype, self.device)
        with self._lock:
            spare = self._free.get(key)
            tensor = spare.pop() if spare else None
            if tensor is None:
                self.misses += 1
            else:
                self.hits += 1
        if tensor is None:
            tensor = torch.empty(key[0], dtype=dtype, device=self.device)
        try:
            yield tensor
        finally:
            with self._lock:
                self._free.setdefault(key, []).append(tensor)

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return sum(t.numel() * t.element_size() for ts in self._free.values() for t in ts)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "held_bytes": self.held_bytes}
