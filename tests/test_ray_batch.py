"""Files across a real local Ray cluster, started by the test on this machine.

The graph here measures without models (frame statistics and audio levels), so its analytics
are the same on every run: a cluster run must give exactly what the single-process job gives.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest
import torch
import yaml
from media_kit import make_clip, probe

ray = pytest.importorskip("ray", reason="the dev extra installs ray")

from pipeline.cluster.batch import run_on_ray  # noqa: E402
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
    again = run_on_ray(items, options, address="auto")  # finished outputs are left alone, as on one machine
    assert [r.status for r in again] == ["skipped"] * 3


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


def test_a_bad_file_fails_alone_and_is_not_retried(cluster, tmp_path):
    source = videos(tmp_path / "in", frames=(20,))
    (source / "broken.mp4").write_bytes(b"this is not a video")
    items = plan_folder(source, tmp_path / "out", extension=".mp4", analytics_dir=None)
    results = {r.source.rsplit("/", 1)[-1]: r for r in run_on_ray(items, options_for(tmp_path), address="auto")}
    assert results["clip0.mp4"].status == "ok"
    assert results["broken.mp4"].status == "failed" and results["broken.mp4"].reason
    assert not (tmp_path / "out" / "broken.mp4").exists()


def test_without_ray_nothing_imports_it(tmp_path):
    """A plain folder run (and everything the command line imports) loads no part of Ray."""
    import subprocess
    import sys

    source = videos(tmp_path / "in", frames=(5,))
    argv = ["--source", str(source), "--output", str(tmp_path / "out"), "--config", "passthrough"]
    code = (
        f"import sys; from pipeline.cli import main; code = main({argv!r}); assert code == 0, code; "
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
