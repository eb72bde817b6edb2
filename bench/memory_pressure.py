#!/usr/bin/env python3
"""The model manager's eviction value against plain LRU, on one request trace, in the same run.

Many models (real weights files of 1–16 MB, written once to a temporary folder) and a budget
that holds about a quarter of them. Requests follow a skewed popularity (Zipf: a few models
are asked for most of the time, many now and then), the way a graph's models and several
sessions' models are. Each policy serves the same trace from a cold start; every miss reads
the model's file again. Target: fewer reloads than LRU.

    python bench/memory_pressure.py [--models 40] [--requests 4000] [--budget 0.25] [--zipf 1.1]

Last line: one JSON object {"reloads", "reloads_lru", "hit_rate", "hit_rate_lru", ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.device_profiles import MB  # noqa: E402
from pipeline.memory import DevicePool, ModelManager, ModelSpec  # noqa: E402


def write_models(folder: Path, count: int, rng: np.random.Generator) -> dict[str, Path]:
    paths = {}
    for index in range(count):
        mb = int(rng.integers(1, 17))
        path = folder / f"model{index:02d}.safetensors"
        save_file({"weight": torch.randn(256 * mb, 1024)}, str(path))  # mb MiB of float32
        paths[f"model{index:02d}"] = path
    return paths


def loader(path: Path):
    def load() -> nn.Module:
        weight = load_file(str(path))["weight"]
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        layer.weight = nn.Parameter(weight, requires_grad=False)
        return layer

    return load


def serve(policy: str, paths: dict[str, Path], trace: list[str], budget: int) -> dict:
    device = DevicePool("sim0", torch.device("cpu"), {"flexible": budget}, total=int(budget / 0.9))
    manager = ModelManager([device], policy=policy, preload=False, idle_unload_s=0)
    for name, path in paths.items():
        manager.register(ModelSpec(name, loader(path), cpu_fallback=False))
    started = time.perf_counter()
    for name in trace:
        manager.acquire(name)
        manager.release(name)
    wall = time.perf_counter() - started
    entries = manager.entries.values()
    loads = sum(e.loads for e in entries)
    return {
        "loads": loads,
        "reloads": loads - sum(1 for e in entries if e.loads),
        "hit_rate": sum(e.hits for e in entries) / len(trace),
        "evictions": sum(e.evictions for e in entries),
        "fallbacks": sum(e.fallbacks for e in entries),
        "load_s": sum(e.load_s * e.loads for e in entries),  # the last measured load time × loads
        "wall_s": wall,
        "mb_read": sum(e.nbytes * e.loads for e in entries) / MB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=40)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--budget", type=float, default=0.25, help="share of all the models' bytes that fits")
    parser.add_argument("--zipf", type=float, default=1.1, help="popularity skew (larger: more skewed)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_models(Path(folder), args.models, rng)
        total = sum(path.stat().st_size for path in paths.values())
        budget = int(total * args.budget)
        names = list(paths)
        popularity = 1.0 / np.arange(1, len(names) + 1) ** args.zipf
        rng.shuffle(names)  # popularity unrelated to size
        trace = list(rng.choice(names, size=args.requests, p=popularity / popularity.sum()))
        ours = serve("score", paths, trace, budget)
        lru = serve("lru", paths, trace, budget)

    print(
        f"{args.models} models, {total / MB:.0f} MB in all, budget {budget / MB:.0f} MB; "
        f"{args.requests} requests, Zipf {args.zipf:g}"
    )
    print(f"{'policy':<22}{'hit rate':>9}{'reloads':>9}{'evictions':>10}{'MB read':>9}{'loading s':>10}")
    for label, result in (("ours (value score)", ours), ("plain LRU", lru)):
        print(
            f"{label:<22}{result['hit_rate']:>9.3f}{result['reloads']:>9}{result['evictions']:>10}"
            f"{result['mb_read']:>9.0f}{result['load_s']:>10.2f}"
        )
    print(f"reloads, ours / LRU: {ours['reloads'] / max(lru['reloads'], 1):.2f} (target < 1)")
    print(
        json.dumps(
            {
                "reloads": ours["reloads"],
                "reloads_lru": lru["reloads"],
                "hit_rate": round(ours["hit_rate"], 4),
                "hit_rate_lru": round(lru["hit_rate"], 4),
                "evictions": ours["evictions"],
                "evictions_lru": lru["evictions"],
                "fallbacks": ours["fallbacks"],
                "load_s": round(ours["load_s"], 3),
                "load_s_lru": round(lru["load_s"], 3),
                "budget_mb": round(budget / MB, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
