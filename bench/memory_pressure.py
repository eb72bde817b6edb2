#!/usr/bin/env python3
"""The model manager's eviction value against plain LRU, on one request trace, in the same run.

Many models (real weights files of 1–16 MB, written once to a temporary folder) and a budget
that holds about a quarter of them. Requests follow a skewed popularity (Zipf: a few models
are asked for most of the time, many now and then), the way a graph's models and several
sessions' models are. Priorities are mixed (a few critical and high models, the rest medium
and low) and every other model may fall back to the CPU; a request holds its model while the
next `--in-flight` requests start (frames in flight), so room can run out and a model fall back,
and the timer's round moving fallbacks back runs every 100 requests. Each policy serves the
same trace from a cold start; every miss reads the model's file again, and the loading time is
the sum of every load's measured time. Target: fewer reloads than LRU.

    python bench/memory_pressure.py [--models 40] [--requests 4000] [--budget 0.25] [--zipf 1.1]

Last line: one JSON object {"reloads", "reloads_lru", "hit_rate", "hit_rate_lru", ...}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.device_profiles import MB  # noqa: E402
from pipeline.model_manager.accounting import DevicePool, ModelSpec  # noqa: E402
from pipeline.model_manager.eviction import Priority  # noqa: E402
from pipeline.model_manager.manager import ModelManager, ModelMemoryError  # noqa: E402

# Share of the models at each priority (the rest medium): a few that must stay, more that matter.
PRIORITY_SHARES: tuple[tuple[Priority, float], ...] = (("critical", 0.05), ("high", 0.15), ("low", 0.4))
RETRY_EVERY = 100  # requests between the rounds that move CPU fallbacks back (the housekeeping timer)


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


def priorities(names: list[str], sizes: dict[str, int]) -> dict[str, Priority]:
    """The smallest models are the critical ones (a face detector, not a language model), so
    the critical ones together take a small part of the budget; the others are spread at random."""
    by_size = sorted(names, key=lambda name: sizes[name])
    count = {priority: round(share * len(names)) for priority, share in PRIORITY_SHARES}
    chosen: dict[str, Priority] = {name: "critical" for name in by_size[: count["critical"]]}
    rest = by_size[count["critical"] :]
    random.Random(len(names)).shuffle(rest)
    for name in rest[: count["high"]]:
        chosen[name] = "high"
    for name in rest[count["high"] : count["high"] + count["low"]]:
        chosen[name] = "low"
    return {name: chosen.get(name, "medium") for name in names}


def serve(
    policy: str, paths: dict[str, Path], trace: list[str], budget: int, ranks: dict[str, Priority], in_flight: int
) -> dict:
    # The models' zone is 80 % of the card: once it is nearly full the card is past its 75 %
    # warning threshold and high models may go too; critical and pinned ones never do, so room
    # can still run out (a fallback, or a refusal for a model that may not run on the CPU).
    device = DevicePool("sim0", torch.device("cpu"), {"flexible": budget}, total=int(budget / 0.8))
    manager = ModelManager([device], policy=policy, preload=False, idle_unload_s=0)
    for index, (name, path) in enumerate(paths.items()):
        manager.register(ModelSpec(name, loader(path), priority=ranks[name], cpu_fallback=index % 2 == 0))
    held: list[str] = []
    started = time.perf_counter()
    refused = 0
    for count, name in enumerate(trace, 1):
        try:
            manager.acquire(name)
        except ModelMemoryError:  # may not run on the CPU and no room: the request fails, the run goes on
            refused += 1
            continue
        held.append(name)
        if len(held) > in_flight:
            manager.release(held.pop(0))
        if count % RETRY_EVERY == 0:
            manager.retry_fallbacks()
    for name in held:
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
        "refused": refused,
        "load_s": sum(e.load_s_total for e in entries),  # every load's measured time, summed
        "wall_s": wall,
        "mb_read": sum(e.nbytes * e.loads for e in entries) / MB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=40)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--budget", type=float, default=0.25, help="share of all the models' bytes that fits")
    parser.add_argument("--zipf", type=float, default=1.1, help="popularity skew (larger: more skewed)")
    parser.add_argument("--in-flight", type=int, default=6, help="requests holding their model at once")
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
        ranks = priorities(names, {name: path.stat().st_size for name, path in paths.items()})
        ours = serve("score", paths, trace, budget, ranks, args.in_flight)
        lru = serve("lru", paths, trace, budget, ranks, args.in_flight)

    print(
        f"{args.models} models, {total / MB:.0f} MB in all, budget {budget / MB:.0f} MB; "
        f"{args.requests} requests, Zipf {args.zipf:g}, {args.in_flight} in flight; "
        f"priorities {dict(sorted(Counter(ranks.values()).items()))}"
    )
    print(
        f"{'policy':<22}{'hit rate':>9}{'reloads':>9}{'evictions':>10}{'fallbacks':>10}{'MB read':>9}{'loading s':>10}"
    )
    for label, result in (("ours (value score)", ours), ("plain LRU", lru)):
        print(
            f"{label:<22}{result['hit_rate']:>9.3f}{result['reloads']:>9}{result['evictions']:>10}"
            f"{result['fallbacks']:>10}{result['refused']:>8}{result['mb_read']:>9.0f}{result['load_s']:>10.2f}"
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
                "fallbacks_lru": lru["fallbacks"],
                "refused": ours["refused"],
                "refused_lru": lru["refused"],
                "load_s": round(ours["load_s"], 3),
                "load_s_lru": round(lru["load_s"], 3),
                "budget_mb": round(budget / MB, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
