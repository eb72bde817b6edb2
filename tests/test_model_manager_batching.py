"""The cross-session batcher: many threads' requests, one call, each caller its own rows."""

from __future__ import annotations

import threading

import pytest
import torch

from pipeline.model_manager.batching import Batcher


class Model:
    """Rows in, rows out (× 2 + 1); records the size of every call."""

    def __init__(self, fail: bool = False):
        self.calls: list[int] = []
        self.fail = fail

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        if self.fail:
            raise RuntimeError("out of memory")
        return x * 2 + 1


def ask_together(batcher: Batcher, inputs: list[torch.Tensor]) -> list[torch.Tensor | BaseException]:
    """Each input from its own thread, released at the same moment."""
    results: list[torch.Tensor | BaseException] = [torch.empty(0)] * len(inputs)
    gate = threading.Barrier(len(inputs))

    def ask(i: int) -> None:
        gate.wait()
        try:
            results[i] = batcher(inputs[i])
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def test_ten_sessions_asking_at_once_share_a_call_and_each_gets_its_own_rows():
    model = Model()
    batcher = Batcher(model, wait_s=0.5)  # generous: the test must not depend on thread timing
    for _ in range(10):
        batcher.join()
    inputs = [torch.full((i % 3 + 1, 4), float(i)) for i in range(10)]
    results = ask_together(batcher, inputs)
    for x, y in zip(inputs, results, strict=True):
        assert torch.equal(y, x * 2 + 1)
    assert len(model.calls) < 10 and sum(model.calls) == sum(x.shape[0] for x in inputs)
    assert batcher.requests == 10 and batcher.calls == len(model.calls)


def test_a_lone_session_never_waits_for_company():
    model = Model()
    batcher = Batcher(model, wait_s=60.0)  # it would hang the test if a lone caller waited
    batcher.join()
    for i in range(5):
        assert torch.equal(batcher(torch.full((2, 3), float(i))), torch.full((2, 3), 2.0 * i + 1))
    assert model.calls == [2] * 5


def test_a_call_never_takes_more_rows_than_the_limit_and_everyone_is_served():
    model = Model()
    batcher = Batcher(model, max_batch=8, wait_s=0.5)
    for _ in range(10):
        batcher.join()
    inputs = [torch.full((4, 2), float(i)) for i in range(10)]
    results = ask_together(batcher, inputs)
    assert all(torch.equal(y, x * 2 + 1) for x, y in zip(inputs, results, strict=True))
    assert max(model.calls) <= 8 and sum(model.calls) == 40


def test_a_failing_call_fails_each_request_in_it():
    batcher = Batcher(Model(fail=True), wait_s=0.5)
    for _ in range(3):
        batcher.join()
    results = ask_together(batcher, [torch.ones(1, 2) for _ in range(3)])
    assert all(isinstance(r, RuntimeError) and "out of memory" in str(r) for r in results)
    with pytest.raises(RuntimeError):
        batcher(torch.ones(1, 2))
