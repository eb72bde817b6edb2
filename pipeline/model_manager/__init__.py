"""The model manager: loads models on demand into device memory by priority, evicts by score,
unloads idle models, and falls back to the CPU when device memory runs short."""

from pipeline.model_manager.manager import DevicePool, ModelManager, ModelMemoryError, ModelSpec, Priority, module_bytes

__all__ = ["DevicePool", "ModelManager", "ModelMemoryError", "ModelSpec", "Priority", "module_bytes"]
