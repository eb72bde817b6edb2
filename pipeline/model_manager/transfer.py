"""The torch side of placing a model: copying it to a device (measuring its load peak),
pinning it in host memory, converting its precision, and giving cached blocks back."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from pipeline.model_manager.accounting import DevicePool


def convert(module: nn.Module, precision: str) -> nn.Module:
    from models.precision import with_precision

    device = next(itertools.chain(module.parameters(), module.buffers()), torch.empty(0)).device
    if precision == "int8" and device.type != "cpu":
        raise ValueError("int8 dynamic quantization runs on the CPU")
    return with_precision(module, precision)


def pin(module: nn.Module) -> None:
    """Page-lock a CPU module's tensors, so a restore to the GPU is one DMA copy."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        tensor.data = tensor.data.pin_memory()


def release_cache(pool: DevicePool) -> None:
    """Return the pool's cached, unallocated blocks to the driver (a simulated pool has none)."""
    if pool.real:
        with torch.cuda.device(pool.device):  # empty_cache acts on the current device only
            torch.cuda.empty_cache()


def move(module: nn.Module, pool: DevicePool, nbytes: int) -> tuple[nn.Module, int]:
    """`module` on the pool's device, and the most bytes the copy took there (its load peak)."""
    if not pool.real:
        return module.to(pool.device), nbytes
    before = torch.cuda.memory_allocated(pool.device)
    torch.cuda.reset_peak_memory_stats(pool.device)
    module = module.to(pool.device)
    torch.cuda.synchronize(pool.device)
    return module, torch.cuda.max_memory_allocated(pool.device) - before
