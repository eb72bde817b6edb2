"""Files across a real local Ray cluster, started by the test on this machine.

The graph here measures without models (frame statistics and audio levels), so its analytics
are the same on every run: a cluster run must give exactly what the single-process job gives.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from media_kit import make_clip, probe

ray = pytest.importorskip("ray", reason="the dev extra installs ray")

from pipeline.cluster.folder_runs import ClusterProgress, run_on_ray  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.job import JobOptions, plan_folder, run_folder  # noqa: E402

GRAPH = {
    "name": "measure",
    "quality": {"mode": "off"},
    "stages": [
        {"name": "frame_stats", "type": "frame_stats", "options": {"downscale": 2}},
        {"name": "audio_level", "type": "audio_level"},
    ],
}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def options_for(tmp_path, **extra) -> JobOptions:
    config_path = tmp_path / "measure.yaml"
    config_path.write_text(yaml.safe_dump(GRAPH))
    return JobOptions(config=load_config(config_path), device=torch.device("cpu"), **extra)


def videos(folder, frames=(20, 25, 30)):
    folder.mkdir()
    for index, count in enumerate(frames):
        make_clip(folder / f"clip{index}.mp4", frames=count)
    return folder


def test_a_folder_over_the_cluster_gives_what_one_process_gives(cluster, tmp_path):
    source = videos(tmp_path / "in")
    options = options_for(tmp_path)
    single = asyncio.run(
        run_folder(plan_folder(source, tmp_path / "one", extension=".mp4", analytics_dir=tmp_path / "one-a"), options)
    )
    items = plan_folder(source, tmp_path / "ray", extension=".mp4", analytics_dir=tmp_path / "ray-a")
    spread = run_on_ray(items, options, address="auto")
    assert [r.status for r in spread] == ["ok"] * 3
    assert [r.frames_out for r in spread] == [r.frames_out for r in single] == [20, 25, 30]
    for item in items:
        assert probe(item.output)["video_frames"] == probe(tmp_path / "one" / item.output.name)["video_frames"]
        ours = (tmp_path / "ray-a" / f"{item.source.stem}.jsonl").read_text()
        assert ours == (tmp_path / "one-a" / f"{item.source.stem}.jsonl").read_text()  # the same analytics
    assert not list((tmp_path / "ray").glob("*.partial*"))
    # Each task kept torch to the one CPU it declared (the graph has one computing stage: on a
    # machine of several cores it would otherwise take them all).
    assert [r.report["cpu_threads"] for r in spread] == [1, 1, 1]
    (tmp_path / "ray" / "clip1.mp4").unlink()
    progress = ClusterProgress(len(items), interactive=False)
    again = run_on_ray(items, options, address="auto", progress=progress)  # finished outputs are left alone
    assert [r.status for r in again] == ["skipped", "ok", "skipped"]
    assert progress.done == 3 and progress.processed == 1  # the skipped files count towards the end too


def _kill_the_worker_once_it_writes(out_dir, killed: list[int]) -> None:
    """Kill (SIGKILL) the Ray worker running a file, as soon as its partial output appears."""
    import psutil

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not killed:
        if list(out_dir.glob("*.partial.mp4")):
            for process in psutil.process_iter(["cmdline"]):
                if any("_process_file" in part for part in process.info["cmdline"] or []):
                    process.send_signal(signal.SIGKILL)
                    killed.append(process.pid)
                    return
        time.sleep(0.05)


def test_a_file_whose_worker_is_killed_mid_way_is_retried_and_never_looks_complete(cluster, tmp_path):
    source = videos(tmp_path / "in", frames=(60,))
    out = tmp_path / "out"
    options = options_for(tmp_path, realtime=True)  # paced at 30 fps: two seconds to kill it in
    items = plan_folder(source, out, extension=".mp4", analytics_dir=None)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_the_worker_once_it_writes, args=(out, killed))
    killer.start()
    results = run_on_ray(items, options, address="auto", max_retries=2)
    killer.join()
    assert killed, "the worker was never caught mid-file"
    (result,) = results
    assert result.status == "ok" and result.frames_out == 60
    assert probe(out / "clip0.mp4")["video_frames"] == 60
    assert not list(out.glob("*.partial*"))  # the retry finished the file and renamed it


def test_a_worker_that_dies_more_often_than_retried_fails_its_file_with_a_plain_reason(cluster, tmp_path):
    source = videos(tmp_path / "in", frames=(60,))
    out = tmp_path / "out"
    items = plan_folder(source, out, extension=".mp4", analytics_dir=tmp_path / "a")
    killed: list[int] = []
    killer = threading.Thread(target=_kill_the_worker_once_it_writes, args=(out, killed))
    killer.start()
    (result,) = run_on_ray(items, options_for(tmp_path, realtime=True), address="auto", max_retries=0)
    killer.join()
    assert killed, "the worker was never caught mid-file"
    assert result.status == "failed"
    assert result.reason == "its worker died on each of 1 try (ray: WorkerCrashedError)"
    assert not (out / "clip0.mp4").exists() and not (tmp_path / "a" / "clip0.jsonl").exists()


class OpenCounter:
    """Counts the opens of one file by any process (Linux inotify): one per attempt at a bad input."""

    IN_OPEN, IN_CLOSE_NOWRITE = 0x20, 0x10
    EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (a watch on a file has no name after it)

    def __init__(self, path: Path):
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK)
        mask = self.IN_OPEN | self.IN_CLOSE_NOWRITE
        if self.fd < 0 or self._libc.inotify_add_watch(self.fd, str(path).encode(), mask) < 0:
            pytest.skip("inotify is not available here")

    def take(self) -> int:
        """Opens since the last call."""
        opens = 0
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return opens
            # Closes are watched too: inotify folds an event into an identical unread one before it,
            # so back-to-back opens would count once; open, close, open does not fold.
            for offset in range(0, len(data), self.EVENT.size):
                opens += bool(self.EVENT.unpack_from(data, offset)[1] & self.IN_OPEN)

    def close(self) -> None:
        os.close(self.fd)


def test_a_bad_file_fails_alone_with_the_single_process_reason_and_is_not_retried(cluster, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    (source / "broken.mp4").write_bytes(b"this is not a video")
    options = options_for(tmp_path)
    opens = OpenCounter(source / "broken.mp4")
    try:
        (single,) = asyncio.run(
            run_folder(plan_folder(source, tmp_path / "one", extension=".mp4", analytics_dir=None), options)
        )
        one_attempt = opens.take()
        items = plan_folder(source, tmp_path / "out", extension=".mp4", analytics_dir=None)
        (result,) = run_on_ray(items, options, address="auto", max_retries=2)
        time.sleep(3.0)  # Ray retries after a short delay: give a retry the time to open it again
        on_ray = opens.take()
    finally:
        opens.close()
    assert result.status == single.status == "failed"
    assert result.reason == single.reason and "broken.mp4" in result.reason  # the job's own words, no Ray wrapping
    assert one_attempt >= 1 and on_ray == one_attempt  # a bad input fails the same way every time: not retried
    assert not (tmp_path / "out" / "broken.mp4").exists()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_a_ray_job_with_130_and_leaves_nothing_partial_under_a_final_name(cluster, tmp_path, stop):
    source = videos(tmp_path / "in", frames=(90, 90))
    out, analytics = tmp_path / "out", tmp_path / "a"
    config = tmp_path / "measure.yaml"
    config.write_text(yaml.safe_dump(GRAPH))
    argv = [sys.executable, "run_pipeline.py", "--source", str(source), "--output", str(out), "--config", str(config)]
    argv += ["--ray", ray.get_runtime_context().gcs_address, "--realtime", "--analytics", str(analytics)]
    root = Path(__file__).resolve().parent.parent
    log = (tmp_path / "stderr.txt").open("w")
    job = subprocess.Popen(argv, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stderr=log)
    try:
        deadline = time.monotonic() + 90
        while not list(out.glob("*.partial.mp4")) and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.1)
        assert list(out.glob("*.partial.mp4")), "no file was started"
        time.sleep(0.5)  # a few frames into the files (three seconds each)
        job.send_signal(stop)
        code = job.wait(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    log.close()
    assert code == 130, (tmp_path / "stderr.txt").read_text()[-2000:]
    finals = [p for p in out.iterdir() if ".partial" not in p.name]
    for path in finals:  # anything under a final name is whole
        assert probe(path)["video_frames"] == 90
        assert len((analytics / f"{path.stem}.jsonl").read_text().splitlines()) == 90
    assert len(finals) < 2, "the job ran to the end: the signal was not acted on"
    assert not [
        p for p in analytics.glob("*.jsonl") if ".partial" not in p.name and p.stem not in {f.stem for f in finals}
    ]


def test_without_ray_nothing_imports_it(tmp_path):
    """A plain folder run (and everything the command line imports) loads no part of Ray."""
    source = videos(tmp_path / "in", frames=(5,))
    argv = ["--source", str(source), "--output", str(tmp_path / "out"), "--config", "passthrough"]
    code = (
        f"import sys; from pipeline.cli import main; code = main({argv!r}); assert code == 0, code; "
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_an_unreachable_cluster_or_no_cpus_per_file_is_one_line(tmp_path):
    """In a process of its own: this module's cluster is still up in the test process, and a
    process already in a Ray session would run the job there."""
    source = videos(tmp_path / "in", frames=(5,))
    base = ["--source", str(source), "--output", str(tmp_path / "out"), "--config", "passthrough"]
    unreachable = [*base, "--ray", "127.0.0.1:1"]  # nothing listens on port 1
    no_cpus = [*base, "--ray", "auto", "--ray-cpus", "0"]
    code = (
        "import ray; from pipeline.cli import main; "
        f"print(main({unreachable!r}), main({no_cpus!r}), ray.is_initialized())"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["2", "2", "False"]  # EXIT_USAGE twice, and no cluster was joined or started
    errors = [line for line in run.stderr.splitlines() if "--ray" in line]
    assert len(errors) == 2, run.stderr[-2000:]
    assert errors[0].endswith(
        "--ray 127.0.0.1:1: cannot reach the cluster (nothing answers at 127.0.0.1:1: Connection refused)"
    )
    assert errors[1].endswith("--ray-cpus 0: must be > 0")
