"""One name per operation; the device of the data picks the implementation.

A CUDA tensor goes to the Triton (or CuPy) kernel, anything else to the torch reference.
The kernel module is imported on first CUDA use, so importing `kernels.ops` never touches
Triton or a GPU driver, and a CPU run never loads them at all.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch


class Dispatched:
    """`reference` for tensors off the GPU; `accelerated` ("module:function") for CUDA tensors."""

    def __init__(self, reference: Callable[..., Any], accelerated: str):
        self.reference = reference
        self.accelerated_name = accelerated
        self._accelerated: Callable[..., Any] | None = None
        self.__name__ = reference.__name__
        self.__doc__ = reference.__doc__

    @property
    def accelerated(self) -> Callable[..., Any]:
        """The kernel, imported on first use."""
        if self._accelerated is None:
            module, function = self.accelerated_name.split(":")
            self._accelerated = getattr(importlib.import_module(module), function)
        return self._accelerated

    def __call__(self, data: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if data.device.type == "cuda":
            return self.accelerated(data, *args, **kwargs)
        return self.reference(data, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<{self.__name__}: {self.accelerated_name} on CUDA, torch reference elsewhere>"
