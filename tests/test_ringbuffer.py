"""The ring: reference counts, both full policies, and no leaked slot after long random runs."""

from __future__ import annotations

import asyncio

import pytest
import torch
from conftest import IndexSource, RecordingSink
from stage_kit import graph_of

from pipeline.executor import Pipeline
from pipeline.ringbuffer import RING_FULL, RingBuffer
from pipeline.scheduling.runner import LATE, OVER_TARGET, THINNED


def test_slots_are_allocated_once_and_leases_view_them():
    ring = RingBuffer(3, (4, 5, 3))
    storage_ptr = ring.storage.data_ptr()
    leases = [ring.try_acquire() for _ in range(3)]
    assert all(lease is not None for lease in leases)
    slot_bytes = 4 * 5 * 3
    assert sorted(lease.tensor.data_ptr() - storage_ptr for lease in leases) == [0, slot_bytes, 2 * slot_bytes]
    for lease in leases:
        lease.release()
    again = ring.try_acquire()
    assert again.tensor.data_ptr() in {storage_ptr, storage_ptr + slot_bytes, storage_ptr + 2 * slot_bytes}
    assert ring.storage.data_ptr() == storage_ptr


def test_refcount_frees_slot_on_last_release_only():
    ring = RingBuffer(1, (2, 2, 3))
    lease = ring.try_acquire()
    lease.retain()
    lease.release()
    assert ring.in_use == 1 and ring.try_acquire() is None
    lease.release()
    assert ring.in_use == 0
    with pytest.raises(RuntimeError, match="released more often"):
        lease.release()


def test_block_policy_waits_for_a_slot(run):
    async def scenario():
        ring = RingBuffer(1, (2, 2, 3), policy="block")
        first = await ring.acquire()
        waiter = asyncio.create_task(ring.acquire())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        first.release()
        second = await asyncio.wait_for(waiter, 1)
        assert second.slot == first.slot and not first.revoked
        second.release()
        assert ring.waits == 1 and ring.in_use == 0
        assert 0.005 < ring.stats()["waited_s"] == ring.stats()["longest_wait_s"] < 1.0  # what the wait cost

    run(scenario())


def test_cancelled_waiter_does_not_leak(run):
    async def scenario():
        ring = RingBuffer(1, (2, 2, 3))
        first = await ring.acquire()
        waiter = asyncio.create_task(ring.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        first.release()
        assert ring.in_use == 0

    run(scenario())


def test_latest_policy_reclaims_oldest_unstarted_frame():
    ring = RingBuffer(3, (2, 2, 3), policy="latest")
    a, b, c = (ring.try_acquire() for _ in range(3))
    a.mark_started()  # a stage is working on a: it must survive
    d = ring.try_acquire()
    assert d is not None and d.slot == b.slot
    assert b.revoked and b.revoke_reason == RING_FULL and not b.mark_started()
    assert not a.revoked and not c.revoked
    b.release()  # a holder of a reclaimed lease releasing it is harmless
    assert ring.in_use == 3 and ring.reclaimed == 1


def test_latest_policy_waits_when_every_frame_is_started(run):
    async def scenario():
        ring = RingBuffer(1, (2, 2, 3), policy="latest")
        only = await ring.acquire()
        only.mark_started()
        assert ring.try_acquire() is None
        waiter = asyncio.create_task(ring.acquire())
        await asyncio.sleep(0.01)
        only.release()
        (await waiter).release()
        assert ring.in_use == 0

    run(scenario())


@pytest.mark.parametrize("policy", ["block", "latest"])
def test_no_slot_leaks_after_ten_thousand_frames_with_random_delays_and_failures(run, policy):
    jitter = {"max_ms": 0.05, "fail_rate": 0.05}
    graph = graph_of(
        [
            {"name": "a", "type": "jitter", "options": {**jitter, "seed": 1}},
            {"name": "b", "type": "jitter", "options": {**jitter, "seed": 2}, "workers": 3},
            {"name": "c", "type": "jitter", "options": {**jitter, "seed": 3}, "after": ["a", "b"]},
            {"name": "d", "type": "jitter", "options": {**jitter, "seed": 4}, "after": ["a"]},
        ],
        max_consecutive_failures=1000,
        ring={"slots": 6, "policy": policy},
    )
    sink = RecordingSink()
    pipeline = Pipeline(graph, IndexSource(10_000, width=4, height=4, live=policy == "latest"), sink)
    report = run(pipeline.run())
    # When the scheduler thinned the last frames, their sound comes after them as a frame of sound alone.
    sound_alone = len(sink.records) - 10_000
    assert sink.indices == list(range(10_000 + sound_alone))
    if sound_alone:
        assert policy == "latest" and sound_alone == 1 and sink.records[-1]["stamp"] is None
        assert sink.records[-1]["audio_samples"] > 0 and not sink.records[-2]["audio_samples"]
    assert pipeline.ring.in_use == 0 and report["leaked_slots"] == 0
    assert report["stages"]["b"]["errors"] > 0
    delivered = [r for r in sink.records[:10_000] if not r["dropped"]]
    assert all(r["stamp"] == r["index"] % 256 for r in delivered)
    if policy == "block":
        assert len(delivered) == 10_000 and report["frames"]["dropped"] == {}
    else:
        assert report["frames"]["in"] == 10_000 + sound_alone
        assert report["frames"]["out"] + sum(report["frames"]["dropped"].values()) == 10_000 + sound_alone
        # A live run: the ring reclaims, and the scheduler may drop late frames and thin the source.
        assert set(report["frames"]["dropped"]) <= {RING_FULL, LATE, THINNED, OVER_TARGET}


def test_ring_lives_on_the_requested_device():
    ring = RingBuffer(2, (2, 2, 3), device="cpu", dtype=torch.uint8)
    assert ring.storage.device.type == "cpu" and ring.storage.dtype == torch.uint8
