"""Which models give up their room: the eviction value and the choice of victims.

Pure functions over plain numbers, with no torch and no lock, so the policy can be read and
tested on its own; the manager (`pipeline.model_manager.manager`) calls them under its lock.

The value (greedy-dual-size-frequency, with priority) is
`inflation + weight(priority) × uses × reload cost / size`: the reload cost is what bringing
the model back would take from the level it would drop to (host memory or disk, measured), and
`inflation` rises to the value of each model evicted, so models not used for a while age out
(recency) while often-used, costly, small, important models stay.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, Protocol, TypeVar

Priority = Literal["low", "medium", "high", "critical"]
Policy = Literal["score", "lru"]

PRIORITY_WEIGHT = {"low": 1.0, "medium": 2.0, "high": 4.0, "critical": 8.0}
HOST_BANDWIDTH = 8e9  # bytes/s host → device, the estimate before a restore has been timed
MB = 1 << 20  # as pipeline.device_profiles.MB, which cannot be imported here: it loads torch


class Candidate(Protocol):
    """What eviction reads of a placed model."""

    @property
    def priority(self) -> Priority: ...

    nbytes: int
    pins: int
    loading: bool
    value: float
    last_use: float


C = TypeVar("C", bound=Candidate)


def value(*, inflation: float, priority: Priority, uses: int, reload_cost_s: float, nbytes: int) -> float:
    """The model's eviction value: higher stays."""
    size_mb = max(nbytes / MB, 1e-3)
    return inflation + PRIORITY_WEIGHT[priority] * uses * reload_cost_s / size_mb


def reload_cost(*, nbytes: int, host_budget: int, restore_s: float | None, load_s: float) -> float:
    """Seconds to bring a model back from where an eviction would send it now: host memory when
    it fits the host budget (timed, or estimated from the bandwidth), else its weights file."""
    if host_budget and nbytes <= host_budget:
        return restore_s if restore_s is not None else nbytes / HOST_BANDWIDTH
    return max(load_s, 1e-6)


def evictable(candidate: Candidate, *, device_level: str, high_too: bool) -> bool:
    """In use, being loaded, or `critical`: never. `high`: only when asked for (`high_too`) or
    when its device is past its warning threshold (`device_level` is not "ok")."""
    if candidate.pins or candidate.loading or candidate.priority == "critical":
        return False
    if candidate.priority == "high":
        return high_too or device_level != "ok"
    return True


def victims(
    placed: Iterable[C], need: int, *, requester: Priority, device_level: str, policy: Policy = "score"
) -> list[C] | None:
    """The lowest-valued (or, with `lru`, least recently used) of `placed` that free `need`
    bytes together, or None if they cannot. `high` models are candidates only past the warning
    threshold, or for a `critical` requester once the others cannot free enough."""
    placed = list(placed)
    passes = (False, True) if requester == "critical" else (False,)
    for high_too in passes:
        candidates = [c for c in placed if evictable(c, device_level=device_level, high_too=high_too)]
        chosen: list[C] = []
        freed = 0
        for candidate in sorted(candidates, key=(lambda c: c.last_use) if policy == "lru" else (lambda c: c.value)):
            if freed >= need:
                break
            chosen.append(candidate)
            freed += candidate.nbytes
        if freed >= need:
            return chosen
    return None


def host_spill(waiting: Sequence[C], *, used: int, budget: int, nbytes: int) -> list[C] | None:
    """Which models waiting in host memory go on to disk, least recently used first, so that
    `nbytes` more fit the host budget; None when they cannot fit however many go."""
    if nbytes > budget:
        return None
    spilled: list[C] = []
    for candidate in sorted(waiting, key=lambda c: c.last_use):
        if used + nbytes <= budget:
            break
        spilled.append(candidate)
        used -= candidate.nbytes
    return spilled if used + nbytes <= budget else None
