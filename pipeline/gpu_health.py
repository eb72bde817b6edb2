"""GPU memory pressure and temperature, for the scheduler: a hot or full card steps quality down.

NVML (the `nvidia-ml-py` package, which needs the NVIDIA driver) gives both readings; without it,
memory still comes from `torch.cuda.mem_get_info` and temperature is unknown. Nothing is loaded
at import time: the first `read` on a CUDA device looks for NVML, and a machine without a
driver or a GPU simply reads nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    memory_used: float  # share of the card's memory in use, 0..1 (all processes, as NVML counts it)
    temperature_c: float | None  # core temperature; None without NVML


def pressure(reading: GpuReading | None, *, memory_max: float, temperature_max_c: float) -> str | None:
    """Why the card should be relieved (one phrase for the log line), or None when it is fine."""
    if reading is None:
        return None
    if reading.memory_used >= memory_max:
        return f"GPU memory {reading.memory_used:.0%} used (limit {memory_max:.0%})"
    if reading.temperature_c is not None and reading.temperature_c >= temperature_max_c:
        return f"GPU at {reading.temperature_c:.0f} °C (limit {temperature_max_c:.0f} °C)"
    return None


class GpuHealth:
    """Reads one CUDA device's memory use and temperature; reads None on any other device."""

    def __init__(self, device: torch.device):
        self.device = device
        self._nvml: Any = None
        self._handle: Any = None
        self._looked = False

    def _find_nvml(self) -> None:
        self._looked = True
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception as exc:  # no package, no driver, no such device: memory from torch only
            log.info("NVML unavailable (%s): GPU temperature is not watched", type(exc).__name__)

    def read(self) -> GpuReading | None:
        if self.device.type != "cuda":
            return None
        if not self._looked:
            self._find_nvml()
        if self._nvml is not None:
            try:
                memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
                temperature = self._nvml.nvmlDeviceGetTemperature(self._handle, self._nvml.NVML_TEMPERATURE_GPU)
                return GpuReading(memory.used / memory.total, float(temperature))
            except Exception as exc:
                log.warning("NVML stopped answering (%s); reading memory through torch", type(exc).__name__)
                self._nvml = None
        free, total = torch.cuda.mem_get_info(self.device)
        return GpuReading(1.0 - free / total, None)
