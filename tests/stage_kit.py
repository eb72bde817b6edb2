"""Stage types for tests, with controllable cost and failures. Not registered globally."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import torch
from pydantic import Field

from pipeline.config import parse_config
from pipeline.frames import Frame
from pipeline.graph import Graph, build_graph
from pipeline.registry import stage_types
from pipeline.stage import ComputeStage, Stage, StageContext, StageOptions


class Stamp(Stage):
    """Reads back the index the source stamped into the pixels."""

    type_name = "stamp"

    async def process(self, frame: Frame) -> dict[str, int]:
        return {"stamp": int(frame.image[0, 0, 0]), "index": frame.index}


class JitterOptions(StageOptions):
    max_ms: float = Field(2.0, ge=0)
    fail_rate: float = Field(0.0, ge=0, le=1)
    seed: int = 0


class Jitter(Stage):
    """Waits a random time (a stand-in for variable cost) and fails at random."""

    type_name = "jitter"
    Options = JitterOptions

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        self._random = random.Random(f"{self.options.seed}:{self.name}")

    async def process(self, frame: Frame) -> dict[str, int]:
        await asyncio.sleep(self._random.random() * self.options.max_ms / 1000)
        if self._random.random() < self.options.fail_rate:
            raise RuntimeError(f"random failure on frame {frame.index}")
        return {"index": frame.index}


class Join(Stage):
    """Reads the annotations of both its parents and reports what they said about this frame."""

    type_name = "join"

    async def process(self, frame: Frame) -> dict[str, Any]:
        assert self.ctx is not None
        return {parent: frame.annotations.get(parent) for parent in self.ctx.parents}


class MatmulOptions(StageOptions):
    size: int = 256
    repeats: int = 8


class Matmul(ComputeStage):
    """CPU-heavy work that releases the GIL: repeated matrix products."""

    type_name = "matmul"
    Options = MatmulOptions

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        n = self.options.size
        self._a = torch.randn(n, n)
        self._out = torch.empty(n, n)

    def compute(self, frame: Frame) -> dict[str, float]:
        for _ in range(self.options.repeats):
            torch.matmul(self._a, self._a, out=self._out)
        return {"checksum": float(self._out[0, 0])}


class CostlyOptions(StageOptions):
    cost_ms: float = Field(10.0, ge=0)  # time per frame at full quality and load 1


class Costly(Stage):
    """Costs `cost_ms` × `load` per frame (a sleep: the same on a busy test machine), less at lower rungs.

    An inference stage with the emotion stage's knobs: called on every Nth frame only (the runner
    holds its result on the others, free), half the cost at the lower resolution, two thirds at
    the lower precision. Tests change `load` while the pipeline runs.
    """

    type_name = "costly"
    Options = CostlyOptions
    quality_knobs = frozenset({"inference_scale", "precision"})
    inference = True

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        self.load = 1.0
        self.speed_up = 1.0
        self.rungs: list[str] = []

    def apply_quality(self, settings) -> None:
        self.rungs.append(settings.rung)
        self.speed_up = (2.0 if settings.inference_scale < 1 else 1.0) * (1.5 if settings.precision == "reduced" else 1)

    async def process(self, frame: Frame) -> dict[str, Any]:
        await asyncio.sleep(self.options.cost_ms * self.load / self.speed_up / 1000)
        return {"held": False}


class Boom(Stage):
    type_name = "boom"

    async def process(self, frame: Frame) -> None:
        raise ValueError("bad pixel")


class FlakyOptions(StageOptions):
    fail_indices: tuple[int, ...] = ()


class Flaky(Stage):
    type_name = "flaky"
    Options = FlakyOptions

    async def process(self, frame: Frame) -> dict[str, int]:
        if frame.index in self.options.fail_indices:
            raise ValueError(f"cannot handle frame {frame.index}")
        return {"ok": frame.index}


class BadSetup(Stage):
    type_name = "bad_setup"

    def setup(self, ctx: StageContext) -> None:
        raise RuntimeError("weights missing")

    async def process(self, frame: Frame) -> None:
        return None


TEST_TYPES = {cls.type_name: cls for cls in (Stamp, Jitter, Join, Matmul, Costly, Boom, Flaky, BadSetup)}


def all_types() -> dict[str, type[Stage]]:
    return {**stage_types(), **TEST_TYPES}


def graph_of(stages: list[dict[str, Any]], **config: Any) -> Graph:
    """A checked graph from plain data, with the built-in and the test stage types."""
    return build_graph(parse_config({"name": "test", **config, "stages": stages}), all_types())
