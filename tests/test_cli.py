"""The command line: a real run of the sample, clear one-line errors, and Ctrl-C that keeps the output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from pipeline.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run_pipeline.py"), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_sample_run_writes_a_playable_video_and_a_report(tmp_path):
    video, report_path = tmp_path / "deep" / "out.mp4", tmp_path / "report.json"
    proc = cli("--source", "sample", "--frames", "45", "--output", str(video), "--report", str(report_path))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "done: 45 frame(s)" in err
    report = json.loads(report_path.read_text())
    assert report["frames"] == {"in": 45, "out": 45, "dropped": {}}
    assert report["leaked_slots"] == 0 and report["graph"] == "default"
    assert set(report["stages"]) == {"emotion", "voice", "frame_stats", "avatar", "context", "audio_level", "meters"}
    with av.open(str(video)) as container:
        frames = list(container.decode(video=0))
        assert len(frames) == 45 and (frames[0].width, frames[0].height) == (640, 360)
        assert container.streams.audio[0].codec_context.name == "aac"


def test_help_explains_every_option():
    proc = cli("--help")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    options = ("--source", "--output", "--config", "--device", "--frames", "--report", "--log-level", "--realtime")
    options += ("--size", "--fps", "--video-codec", "--crf", "--bitrate", "--preset", "--analytics", "--overwrite")
    for option in options:
        assert option in out
    assert "sample" in out and "testsrc" in out


def test_ctrl_c_on_a_live_source_finalizes_a_playable_file(tmp_path):
    video = tmp_path / "live.mkv"
    writing = tmp_path / "live.partial.mkv"  # the name it has until the run ends
    proc = cli("--source", "testsrc", "--output", str(video), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not writing.exists():
        time.sleep(0.1)
    assert not video.exists()
    time.sleep(1.5)  # a second and a half of frames
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not writing.exists()
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) >= 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "nope.mp4"], "--source nope.mp4: no such file or directory"),
        (["--source", "webcam:97"], "webcam: no camera at /dev/video97"),
        (["--size", "big", "--source", "webcam"], "--size big: expected WIDTHxHEIGHT"),
        (["--config", "missing-graph"], "config 'missing-graph' not found"),
        (["--device", "tpu"], "--device 'tpu': expected auto, cpu, cuda or cuda:N"),
        (["--frames", "0"], "--frames 0: must be at least 1"),
        (["--ice-server", "stun:stun.example.org"], "--ice-server: only with --serve"),
        (["--serve", "--ice-server", "http://stun.example.org"], "is not a stun:HOST[:PORT] or turn:HOST"),
        (["--serve", "--ice-server", "turn:relay.example.org"], "needs --ice-username and --ice-credential"),
        (["--serve", "--tls-cert", "cert.pem"], "--tls-cert and --tls-key: give both"),
        (["--serve", "--tls-cert", "no.pem", "--tls-key", "no.key"], "--tls-cert no.pem: no such file"),
        (["--serve", "--tls-self-signed", "--tls-key", "k.pem"], "--tls-self-signed: or --tls-cert and --tls-key"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_code_2(args, message, caplog):
    assert main(args) == EXIT_USAGE
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0]


def test_output_that_cannot_be_written_exits_1(caplog):
    assert main(["--output", "out.avi", "--frames", "1"]) == EXIT_FAILED
    assert any("unsupported output extension" in r.getMessage() for r in caplog.records)


def test_bad_config_file_names_the_node_and_key(tmp_path, caplog):
    config = tmp_path / "graph.yaml"
    config.write_text("stages:\n  - {name: a, type: frame_stats, options: {downscale: 0}}\n")
    assert main(["--config", str(config), "--frames", "1"]) == EXIT_USAGE
    assert any("stage 'a': option 'downscale'" in r.getMessage() for r in caplog.records)


def test_error_reaches_the_terminal_as_exactly_one_line():
    proc = cli("--source", "/no/such/file.mp4")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_USAGE
    assert err.strip().splitlines() == ["ERROR --source /no/such/file.mp4: no such file or directory"]


def test_overhead_bench_runs_and_ends_with_its_json_line():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "overhead.py"), "--frames", "300", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"us_per_hop", "bare_us_per_hop", "ratio"} <= set(figures)
    assert figures["us_per_hop"] > 0 and figures["bare_us_per_hop"] > 0


def test_the_sample_shows_a_real_face_the_default_graph_reads_as_happy(tmp_path):
    analytics = tmp_path / "sample.jsonl"
    assert main(["--source", "sample", "--frames", "12", "--analytics", str(analytics)]) == EXIT_OK
    records = [json.loads(line) for line in analytics.read_text().splitlines()]
    faces = [face for record in records for face in record["emotion"]["faces"]]
    assert len(faces) == 12 and {face["label"] for face in faces} == {"happy"}


def test_the_scheduler_flags_reach_the_run(tmp_path):
    """--quality, --latency-ms and --target-fps override the config's, as the run report shows."""
    paced = tmp_path / "paced.json"
    proc = cli(
        "--source", "sample", "--frames", "20", "--realtime", "--output", "null", "--report", str(paced),
        "--quality", "live", "--latency-ms", "400", "--target-fps", "15",
    )  # fmt: skip
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    report = json.loads(paced.read_text())
    quality = report["quality"]
    assert quality["enabled"] and quality["budget_ms"] == 400 and quality["target_fps"] == 15
    assert report["frames"]["dropped"].get("over_target_fps") == 10  # the 30 fps sample thinned to 15
    batch = tmp_path / "batch.json"
    proc = cli(
        "--source", "sample", "--frames", "10", "--output", "null", "--report", str(batch), "--quality", "auto"
    )  # fmt: skip
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    quality = json.loads(batch.read_text())["quality"]
    assert quality["enabled"] and not quality["drops_late_frames"]  # a file scheduled only when asked
    off = tmp_path / "off.json"
    proc = cli("--source", "sample", "--frames", "10", "--realtime", "--output", "null", "--report", str(off),
               "--quality", "off")  # fmt: skip
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert json.loads(off.read_text())["quality"] == {"enabled": False}


def test_latency_bench_runs_on_the_device_asked_and_reports_offered_and_taken_frames(tmp_path):
    """`--device` reaches the pipeline (cpu:0 is reported as such; the default would say cpu)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "latency_under_load.py"), "--device", "cpu:0", "--seconds", "1",
         "--loads", "1", "--capacity-frames", "8", "--scene", "card", "--plot", str(tmp_path / "plot.png")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu:0"
    for mode in ("on", "off"):
        assert 0 < result[f"taken_{mode}"][0] <= result[f"offered_{mode}"][0]
        assert result[f"ring_waits_{mode}"][0] >= 0 and result[f"reclaimed_{mode}"][0] >= 0
