"""The device layer: run-time device choice, zero-copy views, and lanes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from pipeline.device import (
    MAX_CPU_NICE,
    Lane,
    array_module,
    configure_cpu_threads,
    copy_frame,
    cpu_cores,
    cpu_nice,
    cupy_module,
    grant_cpu_cores,
    resolve_device,
    to_array,
    to_cupy,
    to_numpy,
    to_torch,
)
from pipeline.errors import DeviceError

HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device; the CPU path is tested beside it")


def test_cpu_and_auto_resolve_on_any_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
def test_asking_for_cuda_without_one_is_a_clear_error():
    with pytest.raises(DeviceError, match=r"--device cuda:0: no CUDA device is available \(torch "):
        resolve_device("cuda:0")


@pytest.mark.parametrize("spec", ["gpu", "metal", "cuda:x"])
def test_unknown_device_is_a_clear_error(spec):
    with pytest.raises(DeviceError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


def test_torch_to_numpy_and_back_share_memory():
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    array = to_numpy(tensor)
    assert array.ctypes.data == tensor.data_ptr()
    back = to_torch(array)
    assert back.data_ptr() == tensor.data_ptr()
    array[1, 2] = -1.0
    assert tensor[1, 2] == -1.0  # one buffer, three names


def test_a_ring_slot_view_shares_memory_with_numpy():
    storage = torch.zeros(2, 4, 6, 3, dtype=torch.uint8)
    slot = storage[1]
    assert to_numpy(slot).ctypes.data == slot.data_ptr() == storage.data_ptr() + 4 * 6 * 3


def test_dlpack_producers_convert_without_copy():
    array = np.ones((5, 7), dtype=np.float32)
    tensor = to_torch(array)
    assert tensor.data_ptr() == array.ctypes.data
    assert to_torch(tensor) is tensor


def test_cpu_tensors_use_numpy_as_their_array_module():
    tensor = torch.zeros(3)
    assert array_module(tensor) is np
    assert to_array(tensor).ctypes.data == tensor.data_ptr()


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
def test_cupy_falls_back_to_numpy_without_a_gpu():
    assert cupy_module() is None
    with pytest.raises(DeviceError, match="CuPy cannot run"):
        to_cupy(torch.zeros(2))


@needs_gpu
def test_cuda_tensor_and_cupy_share_memory():
    if cupy_module() is None:
        pytest.skip("CuPy cannot run with this driver")
    tensor = torch.arange(10, device="cuda", dtype=torch.float32)
    array = to_cupy(tensor)
    assert array.data.ptr == tensor.data_ptr()
    assert to_torch(array).data_ptr() == tensor.data_ptr()
    with pytest.raises(DeviceError, match=r"copy it with \.cpu"):
        to_numpy(tensor)


@needs_gpu
def test_cuda_lane_orders_work_after_the_producer_event():
    async def scenario():
        lane = Lane("consumer", torch.device("cuda"), stream_priority=-1)
        data = torch.zeros(1 << 20, device="cuda")
        producer = torch.cuda.Stream()
        with torch.cuda.stream(producer):
            data.add_(1)
            ready = torch.cuda.Event()
            ready.record(producer)
        total, done = await lane.run_ordered(lambda: data.sum(), (), [ready])
        done.synchronize()
        lane.close()
        return float(total)

    assert asyncio.run(scenario()) == float(1 << 20)


def test_cpu_lane_runs_work_on_its_own_thread():
    async def scenario():
        lane = Lane("worker", torch.device("cpu"))
        name = await lane.run(lambda: threading.current_thread().name)
        result, event = await lane.run_ordered(lambda x: x + 1, (41,), [])
        lane.close()
        return name, result, event

    name, result, event = asyncio.run(scenario())
    assert name.startswith("stage-worker") and name != threading.main_thread().name
    assert result == 42 and event is None


def test_stage_priority_maps_onto_thread_nice_values():
    assert cpu_nice(6, 6) == 0
    assert cpu_nice(0, 6) == MAX_CPU_NICE
    assert cpu_nice(3, 6) == MAX_CPU_NICE // 2
    assert cpu_nice(5, 0) == 0  # all stages alike: nobody is lowered


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are a Linux feature")
def test_a_lane_runs_its_work_at_its_nice_value():
    lane = Lane("low", torch.device("cpu"), cpu_nice=7)
    try:
        nice = asyncio.run(lane.run(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
    finally:
        lane.close()
    assert nice - os.getpriority(os.PRIO_PROCESS, 0) == 7


COMPETING = """
import asyncio, os, threading, time, torch
from pipeline.device import Lane
os.sched_setaffinity(0, {0})  # one core for both: they compete
torch.set_num_threads(1)
a = torch.randn(192, 192)
counts = {}
stop = time.monotonic() + 1.5
def work(name):
    n = 0
    while time.monotonic() < stop:
        torch.mm(a, a)
        n += 1
    counts[name] = n
async def main():
    high, low = Lane("high", torch.device("cpu")), Lane("low", torch.device("cpu"), cpu_nice=10)
    await asyncio.gather(high.run(work, "high"), low.run(work, "low"))
    high.close(); low.close()
asyncio.run(main())
print(counts["high"], counts["low"])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are a Linux feature")
def test_when_stages_compete_for_a_core_the_more_important_one_is_served_first():
    run = subprocess.run([sys.executable, "-c", COMPETING], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    high, low = map(int, run.stdout.split())
    assert high > 3 * low, (high, low)  # nice 10 weighs about a tenth of nice 0


def test_cores_granted_to_the_process_cap_torch_threads_not_the_machine_s():
    """A Ray task declared one CPU: its stages keep to one core whatever the machine has."""
    before = torch.get_num_threads()
    try:
        grant_cpu_cores(1)
        assert cpu_cores() == 1
        assert configure_cpu_threads(1) == 1 and torch.get_num_threads() == 1
        grant_cpu_cores(None)
        assert cpu_cores() == (os.cpu_count() or 1)
    finally:
        grant_cpu_cores(None)
        torch.set_num_threads(before)


def test_a_frame_copy_on_a_cpu_is_one_plain_copy_not_a_torch_op(monkeypatch):
    """A strided view of a wider picture (as the synthetic source pans) and a NumPy picture (as the
    WebRTC source decodes) land in a slot exactly, without torch's copy: on an event loop that
    would wake torch's sleeping intra-op threads for every frame."""
    wide = torch.randint(0, 256, (36, 128), dtype=torch.uint8)
    slot = torch.zeros(36, 64, dtype=torch.uint8)

    def refused(*args, **kwargs):
        raise AssertionError("torch's copy was used")

    monkeypatch.setattr(torch.Tensor, "copy_", refused)
    copy_frame(slot, wide[:, 10:74])
    assert torch.equal(slot, wide[:, 10:74])
    picture = np.arange(36 * 64, dtype=np.uint8).reshape(36, 64)
    copy_frame(slot, picture)
    assert np.array_equal(slot.numpy(), picture)
    with pytest.raises(TypeError):
        copy_frame(slot, picture.astype(np.float32))  # no silent conversion
