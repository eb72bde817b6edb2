"""The background detector: one detection at a time off the caller's thread, results taken once."""

from __future__ import annotations

import threading

import pytest
import torch

from pipeline.stages.background_detection import BackgroundDetector


def test_a_detection_runs_on_its_own_thread_and_its_result_is_taken_once():
    release = threading.Event()
    threads = []

    def detect(picture: torch.Tensor) -> float:
        threads.append(threading.current_thread())
        release.wait(5)
        return float(picture.sum())

    detector = BackgroundDetector(detect)
    try:
        assert detector.take() is None and not detector.busy  # nothing started
        detector.start(torch.ones(3))
        assert detector.busy
        assert detector.take() is None  # still running: the caller goes on without it
        with pytest.raises(RuntimeError, match="already running"):
            detector.start(torch.ones(3))  # never a queue of detections behind the camera
        release.set()
        for _ in range(500):
            if (found := detector.take()) is not None:
                break
            threading.Event().wait(0.01)
        assert found == 3.0
        assert threads and threads[0] is not threading.main_thread()
        assert detector.take() is None and not detector.busy  # taken once
        assert (detector.started, detector.finished) == (1, 1)
    finally:
        release.set()
        detector.close()


def test_a_detection_that_raises_raises_on_the_frame_that_takes_it():
    def detect(picture: torch.Tensor) -> float:
        raise ValueError("broken detector")

    detector = BackgroundDetector(detect)
    try:
        detector.start(torch.ones(1))
        with pytest.raises(ValueError, match="broken detector"):
            for _ in range(500):
                detector.take()
                threading.Event().wait(0.01)
        assert not detector.busy  # the next detection can start
    finally:
        detector.close()


def test_close_waits_for_the_running_detection():
    finished = threading.Event()

    def detect(picture: torch.Tensor) -> None:
        threading.Event().wait(0.2)
        finished.set()

    detector = BackgroundDetector(detect)
    detector.start(torch.ones(1))
    detector.close()  # it holds its model pinned: closing must not leave it running
    assert finished.is_set()


def test_the_detection_thread_is_served_after_the_frames():
    """On a busy CPU the frames come first: the detector's thread runs at a higher nice value."""
    import os
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("thread nice values are Linux's")
    nice = []

    def detect(picture: torch.Tensor) -> None:
        nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    detector = BackgroundDetector(detect, stage_nice=2)  # a stage at nice 2: its detector 5 steps behind
    try:
        detector.start(torch.ones(1))
    finally:
        detector.close()
    assert nice == [max(7, os.getpriority(os.PRIO_PROCESS, 0))]  # (lowering a nice value needs privilege)
