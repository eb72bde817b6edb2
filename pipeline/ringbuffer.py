"""The frame ring: N image slots allocated once, leased to frames and counted back in.

Decode writes straight into a slot and every stage reads it there, so the pixels of a frame
are never copied between capture and encode. When every slot is taken, the policy decides:
`block` (batch) waits for a slot to come back; `latest` (live) reclaims the oldest frame that
no stage has started, so the newest frame wins and latency cannot grow behind a full ring.

All methods are called from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from enum import StrEnum

import torch

RING_FULL = "ring_full"  # drop reason for a frame whose slot the `latest` policy reclaimed


class FullPolicy(StrEnum):
    BLOCK = "block"
    LATEST = "latest"


class SlotLease:
    """One frame's hold on one slot, with a reference count."""

    __slots__ = ("refs", "revoke_reason", "revoked", "ring", "slot", "started", "tensor")

    def __init__(self, ring: RingBuffer, slot: int, tensor: torch.Tensor):
        self.ring = ring
        self.slot = slot
        self.tensor = tensor
        self.refs = 1
        self.started = False  # a stage has begun on it: it can no longer be reclaimed
        self.revoked = False
        self.revoke_reason: str | None = None

    def retain(self) -> SlotLease:
        """Take one more reference (e.g. a stage that keeps the pixels past its call)."""
        if self.refs <= 0 and not self.revoked:
            raise RuntimeError(f"slot {self.slot}: retain after the last release")
        self.refs += 1
        return self

    def release(self) -> None:
        """Drop one reference; the slot goes back to the ring with the last one."""
        if self.revoked:
            return  # the ring already took the slot back
        if self.refs <= 0:
            raise RuntimeError(f"slot {self.slot}: released more often than leased")
        self.refs -= 1
        if self.refs == 0:
            self.ring._give_back(self)

    def mark_started(self) -> bool:
        """Pin the lease against reclaiming; False if it was reclaimed already."""
        if self.revoked:
            return False
        self.started = True
        return True


class RingBuffer:
    """N preallocated slots of one shape on one device."""

    def __init__(
        self,
        slots: int,
        shape: tuple[int, ...],
        *,
        dtype: torch.dtype = torch.uint8,
        device: torch.device | str = "cpu",
        policy: FullPolicy | str = FullPolicy.BLOCK,
    ):
        if slots < 1:
            raise ValueError(f"ring needs at least one slot, got {slots}")
        self.policy = FullPolicy(policy)
        self.storage = torch.empty((slots, *shape), dtype=dtype, device=device)
        self._views = list(self.storage.unbind(0))
        self._free: deque[int] = deque(range(slots))
        self._live: dict[int, SlotLease] = {}  # slot → lease, oldest lease first
        self._waiters: deque[asyncio.Future[SlotLease]] = deque()
        self.leased = 0  # counters for the report
        self.reclaimed = 0
        self.waits = 0  # times the source waited for a slot (no slot free, none to reclaim)
        self.waited_s = 0.0  # ... all together; a wait ends when a frame in flight gives its slot back
        self.longest_wait_s = 0.0
        self.max_in_use = 0

    @property
    def slots(self) -> int:
        return len(self._views)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.storage.shape[1:])

    @property
    def in_use(self) -> int:
        return len(self._live)

    def try_acquire(self) -> SlotLease | None:
        """A lease now, or None if the policy says to wait."""
        if self._free:
            return self._lease(self._free.popleft())
        if self.policy is FullPolicy.LATEST:
            victim = next((lease for lease in self._live.values() if not lease.started), None)
            if victim is not None:
                self._revoke(victim, RING_FULL)
                return self._lease(victim.slot)
        return None

    async def acquire(self) -> SlotLease:
        """A lease, waiting for a slot to come back if the policy says to."""
        lease = self.try_acquire()
        if lease is not None:
            return lease
        self.waits += 1
        waiter: asyncio.Future[SlotLease] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        started = time.monotonic()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                waiter.result().release()  # handed a slot just as we were cancelled
            raise
        finally:
            waited = time.monotonic() - started
            self.waited_s += waited
            self.longest_wait_s = max(self.longest_wait_s, waited)

    def stats(self) -> dict[str, int | str]:
        return {
            "slots": self.slots,
            "policy": self.policy.value,
            "leased": self.leased,
            "reclaimed": self.reclaimed,
            "waits": self.waits,
            "waited_s": round(self.waited_s, 4),
            "longest_wait_s": round(self.longest_wait_s, 4),
            "max_in_use": self.max_in_use,
            "in_use": self.in_use,
        }

    def _lease(self, slot: int) -> SlotLease:
        lease = SlotLease(self, slot, self._views[slot])
        self._live[slot] = lease
        self.leased += 1
        self.max_in_use = max(self.max_in_use, len(self._live))
        return lease

    def _revoke(self, lease: SlotLease, reason: str) -> None:
        lease.revoked = True
        lease.revoke_reason = reason
        del self._live[lease.slot]
        self.reclaimed += 1

    def _give_back(self, lease: SlotLease) -> None:
        del self._live[lease.slot]
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(self._lease(lease.slot))
                return
        self._free.append(lease.slot)
