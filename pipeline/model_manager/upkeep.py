"""What the manager's timer round decides: which models are idle, which go first when a device
is past its critical threshold, and which model the usage history predicts next.

Pure decisions over plain fields, with no torch and no lock; the manager
(`pipeline.model_manager.manager`) acts on them under its lock.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Protocol, TypeVar

from pipeline.model_manager.eviction import Priority


class Resident(Protocol):
    """What upkeep reads of a registered model."""

    @property
    def name(self) -> str: ...

    @property
    def priority(self) -> Priority: ...

    level: str
    pins: int
    nbytes: int
    last_use: float


R = TypeVar("R", bound=Resident)


def idle(models: Iterable[R], *, now: float, idle_unload_s: float) -> list[R]:
    """Models loaded somewhere and unused for `idle_unload_s`; never one in use or `critical`
    (those stay resident however long a pause lasts). None at all when `idle_unload_s` is 0."""
    if not idle_unload_s:
        return []
    return [
        m
        for m in models
        if m.level != "disk" and not m.pins and m.priority != "critical" and now - m.last_use >= idle_unload_s
    ]


def relief_order(placed: Iterable[R]) -> list[R]:
    """What a device past its critical threshold gives up, in order: its low-priority models not
    in use, largest first (the fewest unloads bring it back under its warning threshold)."""
    return sorted((m for m in placed if m.priority == "low" and not m.pins), key=lambda m: m.nbytes, reverse=True)


class UsageHistory:
    """Which model follows which: each use after a different model counts one transition."""

    def __init__(self) -> None:
        self._next: dict[str, Counter[str]] = defaultdict(Counter)
        self.last: str | None = None

    def used(self, name: str) -> None:
        if self.last is not None and self.last != name:
            self._next[self.last][name] += 1
        self.last = name

    def predicted_next(self, after: str) -> str | None:
        """The model most often used right after `after` so far, if any."""
        following = self._next.get(after)
        return following.most_common(1)[0][0] if following else None
