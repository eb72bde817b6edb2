"""The model manager: loads models on demand into device memory zones by priority, evicts by
score, unloads idle models, and falls back to the CPU when device memory runs short.

- `manager`: `ModelManager`, the one object stages and runs hold; placement and levels.
- `accounting`: what it counts: `ModelSpec`, each model's `Entry`, each device's `DevicePool`.
- `eviction`: the eviction value and the choice of victims (pure, no torch).
- `upkeep`: the timer round's decisions: idle models, relief order, the usage history.
- `transfer`: the torch side: copies to and from a device, pinning, precision.
- `batching`: one model's calls from several sessions gathered into one batch.
- `status`: the report.

This `__init__` imports nothing, so the pure parts load without torch.
"""
