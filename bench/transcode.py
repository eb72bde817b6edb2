"""File-to-file transcoding: our passthrough graph against the ffmpeg command line, same run.

Both decode the same generated 720p30 H.264 + AAC clip and encode it with libx264 (same
preset and CRF) and AAC. Ours is timed in-process from opening the input to the finished
output; ffmpeg as a whole command. Target: ours ≥ 0.9× ffmpeg's frames per second.

    python bench/transcode.py [--seconds 20] [--preset ultrafast] [--repeats 3]

The `ffmpeg` program is needed for the baseline (Debian: apt-get install ffmpeg).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.executor import Pipeline  # noqa: E402
from pipeline.graph import build_graph  # noqa: E402
from pipeline.io.media import MediaSource  # noqa: E402
from pipeline.io.sinks import EncoderSettings, FileSink  # noqa: E402

WIDTH, HEIGHT, FPS = 1280, 720, 30  # the clip: 720p30


def make_input(path: Path, seconds: int, ffmpeg: str) -> None:
    """A 720p30 H.264 + AAC test clip: moving test pattern and a tone, encoded once at 'medium'."""
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
         "-c:v", "libx264", "-preset", "medium", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
        check=True,
    )  # fmt: skip


def run_ffmpeg(ffmpeg: str, source: Path, output: Path, preset: str, crf: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-i", str(source), "-c:v", "libx264", "-preset", preset, "-crf", str(crf),
         "-c:a", "aac", str(output)],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - start


def run_ours(source: Path, output: Path, preset: str, crf: int) -> tuple[float, int]:
    start = time.perf_counter()
    pipeline = Pipeline(
        build_graph(load_config("passthrough")),
        MediaSource(source),
        FileSink(output, settings=EncoderSettings(video_codec="libx264", crf=crf, preset=preset)),
    )
    report = asyncio.run(pipeline.run())
    return time.perf_counter() - start, report["frames"]["out"]


def count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20, help="length of the test clip. Default: 20")
    parser.add_argument("--preset", default="ultrafast", help="x264 preset for both. Default: ultrafast")
    parser.add_argument("--crf", type=int, default=23, help="x264 CRF for both. Default: 23")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating; medians reported")
    args = parser.parse_args()
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        sys.exit("bench/transcode.py: the ffmpeg program is needed for the baseline (apt-get install ffmpeg)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "in.mp4"
        make_input(source, args.seconds, ffmpeg)
        frames = count_frames(source)
        ours_s, theirs_s = [], []
        for _ in range(args.repeats):
            seconds, out_frames = run_ours(source, work / "ours.mp4", args.preset, args.crf)
            if out_frames != frames:
                sys.exit(f"ours wrote {out_frames} of {frames} frames")
            ours_s.append(seconds)
            theirs_s.append(run_ffmpeg(ffmpeg, source, work / "ffmpeg.mp4", args.preset, args.crf))
        sizes = {name: (work / f"{name}.mp4").stat().st_size for name in ("ours", "ffmpeg")}
    ours_fps = frames / statistics.median(ours_s)
    ffmpeg_fps = frames / statistics.median(theirs_s)
    ratio = ours_fps / ffmpeg_fps
    print(
        f"720p{FPS} H.264 + AAC, {frames} frames, libx264 -preset {args.preset} -crf {args.crf}, {args.repeats} run(s)"
    )
    print(f"{'':<22}{'fps':>8}{'median s':>10}{'output MB':>11}")
    print(f"{'ours (passthrough)':<22}{ours_fps:>8.1f}{statistics.median(ours_s):>10.2f}{sizes['ours'] / 1e6:>11.2f}")
    print(f"{'ffmpeg CLI':<22}{ffmpeg_fps:>8.1f}{statistics.median(theirs_s):>10.2f}{sizes['ffmpeg'] / 1e6:>11.2f}")
    print(f"ratio ours/ffmpeg: {ratio:.2f} (target >= 0.9)")
    print(json.dumps({"ours_fps": round(ours_fps, 1), "ffmpeg_fps": round(ffmpeg_fps, 1), "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
