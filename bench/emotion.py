#!/usr/bin/env python3
"""The emotion stage per frame: 640×480 and 1280×720, one and four real faces, detection every frame or every 3rd.

Frames are the astronaut's face (public domain) placed once or four times on a grey frame,
as I420 slots on the chosen device; the stage runs exactly as in a pipeline (`compute` on
each frame in turn). Time is split into detection (MTCNN), preparation (the fused
crop/resize/normalize kernel, for the detector's input and the faces) and classification
(mini-Xception); tracking and bookkeeping are the rest. Detection every frame is the baseline
each "every 3rd" row is compared with, in the same run; the last row of each also searches the
whole frame on only every 5th detection (`search_every`), looking near the tracked faces between.

    python bench/emotion.py [--frames 30] [--device auto|cpu|cuda]

Then, unless `--no-agreement`, how often the stage reads a face as the original `fer` pipeline
does (bench/emotion_agreement.py), per group of pictures.

Last line: one JSON object {"device", "runs": [{"size", "faces", "detect_every", "search_every",
"fps", "ms", "share"}...], "agreement": {reference: {group: {"paired", "agreement",
"their_crop_agreement", "missed"}}}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import numpy as np
import torch

import pipeline.stages.emotion.stage as emotion_module
from bench.emotion_agreement import compare, describe
from kernels import ops
from kernels.colour import rgb_to_i420
from pipeline.device import configure_cpu_threads
from pipeline.frames import Frame
from pipeline.io.base import StreamInfo
from pipeline.io.synthetic import FACE_PICTURE
from pipeline.ringbuffer import RingBuffer
from pipeline.stage import StageContext

SIZES = ((640, 480), (1280, 720))
FACE_COUNTS = (1, 4)
CADENCES = ((1, 1), (3, 1), (3, 5))  # (detect_every, search_every)


def scene(width: int, height: int, faces: int) -> torch.Tensor:
    """I420 frame: the astronaut's head and shoulders `faces` times (one, or a 2×2 grid) on grey."""
    with av.open(str(FACE_PICTURE)) as container:
        photo = next(container.decode(video=0))
    canvas = np.full((height, width, 3), 128, dtype=np.uint8)
    cells = 1 if faces == 1 else 2
    cell_h, cell_w = height // cells, width // cells
    side = min(cell_h, cell_w) & ~1
    head = photo.reformat(width=side * 512 // 288 & ~1, height=side, format="rgb24").to_ndarray()
    head = head[:, head.shape[1] // 2 - side // 2 : head.shape[1] // 2 + side // 2]  # the face in the middle
    for i in range(faces):
        top, left = (i // cells) * cell_h, (i % cells) * cell_w
        canvas[top : top + side, left : left + side] = head
    return rgb_to_i420(torch.from_numpy(canvas))


class Timed:
    """Adds each call's wall time to `totals[name]` (synchronizing CUDA so the time is the work's)."""

    def __init__(self, fn, name: str, totals: dict[str, float], device: torch.device):
        self.fn, self.name, self.totals, self.device = fn, name, totals, device

    def __call__(self, *args, **kwargs):
        began = time.perf_counter()
        out = self.fn(*args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.totals[self.name] += time.perf_counter() - began
        return out


def run(width: int, height: int, faces: int, cadence: tuple[int, int], frames: int, device: torch.device) -> dict:
    detect_every, search_every = cadence
    info = StreamInfo(width, height, Fraction(30), Fraction(1, 30))
    options = emotion_module.EmotionOptions(detect_every=detect_every, search_every=search_every)
    stage = emotion_module.Emotion("emotion", options=options)
    stage.setup(StageContext.standalone(stage, device, stream=info))
    totals: dict[str, float] = defaultdict(float)
    # The stage's own run's models: its manager holds them resident (there is room), so these are
    # the objects every frame gets.
    detector = stage.models.acquire(stage._detector_name)
    classifier = stage.models.acquire(emotion_module.CLASSIFIER)
    detector.detect = Timed(detector.detect, "detection", totals, device)
    detector.detect_near = Timed(detector.detect_near, "detection", totals, device)
    classifier.forward = Timed(classifier.forward, "classification", totals, device)
    timed_ops = type(
        "TimedOps", (), {"prepare_input": staticmethod(Timed(ops.prepare_input, "preparation", totals, device))}
    )
    original_ops, emotion_module.ops = emotion_module.ops, timed_ops
    ring = RingBuffer(2, info.frame_shape, device=device)
    picture = scene(width, height, faces).to(device)
    try:
        found = []
        began = None
        for index in range(frames + 3):  # three warm-up frames
            if index == 3:
                began = time.perf_counter()
                totals.clear()
            lease = ring.try_acquire()
            lease.tensor.copy_(picture)
            frame = Frame(index, index, Fraction(1, 30), time.monotonic_ns(), lease)
            found.append(len(stage.compute(frame)["faces"]))
            frame.release()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - began
    finally:
        emotion_module.ops = original_ops
        del detector.detect, detector.detect_near, classifier.forward
        stage.models.release(stage._detector_name)
        stage.models.release(emotion_module.CLASSIFIER)
    parts = {name: totals[name] for name in ("detection", "preparation", "classification")}
    parts["other"] = max(0.0, wall - sum(parts.values()))
    return {
        "size": f"{width}x{height}",
        "faces": faces,
        "found": int(np.median(found[3:])),
        "detect_every": detect_every,
        "search_every": search_every,
        "fps": round(frames / wall, 1),
        "ms": round(wall / frames * 1e3, 2),
        "share": {name: round(value / wall, 3) for name, value in parts.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=30, help="timed frames per configuration. Default: 30")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    parser.add_argument(
        "--no-agreement",
        dest="agreement",
        action="store_false",
        help="skip the agreement with the original fer pipeline (about a minute on a CPU)",
    )
    args = parser.parse_args()
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cpu":
        configure_cpu_threads(1)  # as in a pipeline: the stage has its own worker thread
    print(f"emotion stage on {device}, {args.frames} frames per row (after 3 warm-up frames)")
    columns = (
        ("faces", 6),
        ("found", 6),
        ("detect", 6),
        ("search", 8),
        ("fps", 8),
        ("ms", 8),
        ("det", 6),
        ("prep", 6),
        ("cls", 6),
    )
    print(f"{'size':<10}" + "".join(f"{name:>{width}}" for name, width in columns) + f"{'other':>7}{'vs every':>10}")
    runs = []
    for (width, height), faces in ((s, f) for s in SIZES for f in FACE_COUNTS):
        baseline = None
        for detect_every, search_every in CADENCES:
            row = run(width, height, faces, (detect_every, search_every), args.frames, device)
            runs.append(row)
            baseline = baseline or row["fps"]
            share = row["share"]
            print(
                f"{row['size']:<10}{faces:>6}{row['found']:>6}{f'1/{detect_every}':>8}{f'1/{search_every}':>8}"
                f"{row['fps']:>8.1f}"
                f"{row['ms']:>8.2f}{share['detection']:>6.0%}{share['preparation']:>6.0%}"
                f"{share['classification']:>6.0%}{share['other']:>7.0%}{row['fps'] / baseline:>9.2f}x"
            )
    print("det: MTCNN; prep: the fused crop/resize/normalize kernel; cls: mini-Xception")
    print("search: detections that search the whole frame (the others look near the tracked faces)")
    print("vs every: fps over detecting every frame, same size and faces")
    summary: dict = {"device": str(device), "runs": runs}
    if args.agreement:
        agreement = compare(device)
        print()
        print("agreement with the original fer pipeline on the same faces (bench/emotion_agreement.py)")
        print(describe(agreement))
        summary["agreement"] = {
            reference: {
                group: {key: s[key] for key in ("paired", "agreement", "their_crop_agreement", "missed")}
                for group, s in [*result["groups"].items(), ("all", result["overall"])]
            }
            for reference, result in agreement.items()
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
