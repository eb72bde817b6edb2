#!/usr/bin/env python3
"""Files per minute: the single-process folder job against Ray with 1 and 2 workers, same run.

A folder of generated clips (a real face for the emotion stage, a tone) goes through the
default graph three ways: `run_folder` in this process; Ray on this machine with one worker
(a cluster of 1 CPU, one task at a time); Ray with two workers (2 CPUs, two files at once).
The clock runs from submitting the first file to the last result; starting the cluster is not
counted (a cluster outlives any one job), but each worker's first model load is. The files are
written to a temporary folder.

Target: Ray with one worker within 10% of the single process.

    python bench/scale_out.py [--files 8] [--seconds 2] [--size 320x240]

Last line: one JSON object {"single_fpm", "ray_1_fpm", "ray_2_fpm", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.io.synthetic import sample_source  # noqa: E402
from pipeline.job import JobOptions, plan_folder, run_folder  # noqa: E402


def write_clips(folder: Path, count: int, seconds: float, size: tuple[int, int]) -> None:
    """`count` clips of the built-in face scene with its tone, H.264 + AAC."""
    source = sample_source(width=size[0], height=size[1], frames=int(seconds * 30))
    frames = []
    from pipeline.ringbuffer import RingBuffer

    async def grab() -> None:
        ring = RingBuffer(2, source.info.frame_shape)
        async for frame in source.frames(ring):
            frames.append((frame.image.clone(), frame.audio.samples.clone()))
            frame.release()

    asyncio.run(grab())
    for index in range(count):
        with av.open(str(folder / f"clip{index:02d}.mp4"), "w") as out:
            video = out.add_stream("libx264", rate=30, options={"preset": "ultrafast"})
            video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
            audio = out.add_stream("aac", rate=48000)
            audio.layout = "mono"
            pts = 0
            for image, samples in frames:
                picture = av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(image.numpy()), format="yuv420p")
                out.mux(video.encode(picture))
                sound = av.AudioFrame.from_ndarray(samples.numpy().astype(np.float32), format="fltp", layout="mono")
                sound.sample_rate, sound.pts = 48000, pts
                pts += sound.samples
                out.mux(audio.encode(sound))
            out.mux(video.encode())
            out.mux(audio.encode())


def single(folder: Path, out: Path, options: JobOptions) -> float:
    items = plan_folder(folder, out, extension=".mp4", analytics_dir=None)
    started = time.perf_counter()
    results = asyncio.run(run_folder(items, options))
    assert all(r.status == "ok" for r in results), [r.reason for r in results]
    return time.perf_counter() - started


def on_ray(folder: Path, out: Path, options: JobOptions, workers: int) -> float:
    import ray

    from pipeline.cluster.folder_runs import run_on_ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        items = plan_folder(folder, out, extension=".mp4", analytics_dir=None)
        started = time.perf_counter()
        results = run_on_ray(items, options, address="auto")
        wall = time.perf_counter() - started
        assert all(r.status == "ok" for r in results), [r.reason for r in results]
        return wall
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each clip")
    parser.add_argument("--size", default="320x240")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    size = tuple(int(v) for v in args.size.split("x"))
    options = JobOptions(config=load_config("default"), device=torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        folder = tmp_path / "in"
        folder.mkdir()
        write_clips(folder, args.files, args.seconds, size)
        walls = {
            "single": single(folder, tmp_path / "single", options),
            "ray_1": on_ray(folder, tmp_path / "ray1", options, 1),
            "ray_2": on_ray(folder, tmp_path / "ray2", options, 2),
        }
    fpm = {name: args.files / wall * 60 for name, wall in walls.items()}
    print(f"{args.files} clips of {args.seconds:g} s at {args.size}, default graph, CPU; cluster start not counted")
    print(f"{'run':<22}{'wall s':>8}{'files/min':>11}{'vs single':>11}")
    for name, label in (("single", "single process"), ("ray_1", "Ray, 1 worker"), ("ray_2", "Ray, 2 workers")):
        print(f"{label:<22}{walls[name]:>8.2f}{fpm[name]:>11.1f}{fpm[name] / fpm['single']:>11.2f}")
    overhead_s = (walls["ray_1"] - walls["single"]) / args.files
    print(
        f"Ray with one worker: {walls['ray_1'] / walls['single'] - 1:+.1%} against the single process "
        f"(target < +10%); {overhead_s * 1000:+.0f} ms per file"
    )
    print(
        json.dumps(
            {
                "single_fpm": round(fpm["single"], 2),
                "ray_1_fpm": round(fpm["ray_1"], 2),
                "ray_2_fpm": round(fpm["ray_2"], 2),
                "ray_1_overhead": round(walls["ray_1"] / walls["single"] - 1, 4),
                "per_file_overhead_ms": round(overhead_s * 1000, 1),
                "files": args.files,
            }
        )
    )


if __name__ == "__main__":
    main()
