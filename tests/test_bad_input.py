"""Bad input, each case with a file made here: a clear one-line error or correct handling, never a traceback."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from media_kit import cut, make_clip, probe

from pipeline.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main


def run_cli(caplog, *args: str) -> tuple[int, list[str]]:
    caplog.clear()
    code = main(["--config", "passthrough", *args])
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    for message in errors:
        assert "\n" not in message and "Traceback" not in message
    return code, errors


def test_missing_path(tmp_path, caplog):
    code, errors = run_cli(caplog, "--source", str(tmp_path / "nope.mp4"), "--output", str(tmp_path / "o.mp4"))
    assert code == EXIT_USAGE and "no such file" in errors[0]


def test_text_file_named_mp4(tmp_path, caplog):
    fake = tmp_path / "notes.mp4"
    fake.write_text("hello, this is not a video\n")
    code, errors = run_cli(caplog, "--source", str(fake), "--output", str(tmp_path / "o.mp4"))
    assert code == EXIT_USAGE and "cannot be read as media" in errors[0]
    assert "not a media file FFmpeg recognises" in errors[0] and "moov" not in errors[0]
    assert not list(tmp_path.glob("o*.mp4"))


def test_random_bytes_named_mov_are_no_media_rather_than_a_cut_mp4(tmp_path, caplog):
    fake = tmp_path / "noise.mov"
    fake.write_bytes(bytes(range(256)) * 64)
    code, errors = run_cli(caplog, "--source", str(fake), "--output", str(tmp_path / "o.mp4"))
    assert code == EXIT_USAGE and "not a media file FFmpeg recognises" in errors[0] and "moov" not in errors[0]


def test_zero_byte_file(tmp_path, caplog):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    code, errors = run_cli(caplog, "--source", str(empty), "--output", str(tmp_path / "o.mp4"))
    assert code == EXIT_USAGE and "empty" in errors[0]


def test_mp4_cut_before_its_index_was_written(tmp_path, caplog):
    clip = cut(make_clip(tmp_path / "in.mp4", frames=60), 0.5, tmp_path / "cut.mp4")
    code, errors = run_cli(caplog, "--source", str(clip), "--output", str(tmp_path / "o.mp4"))
    assert code == EXIT_USAGE and "moov" in errors[0]
    assert not list(tmp_path.glob("o*.mp4"))


@pytest.mark.parametrize(("suffix", "options"), [(".mp4", {"movflags": "faststart"}), (".mkv", None), (".ts", None)])
def test_file_cut_mid_stream_transcodes_the_decodable_part(tmp_path, caplog, suffix, options):
    clip = cut(make_clip(tmp_path / f"in{suffix}", frames=60, options=options), 0.55, tmp_path / f"cut{suffix}")
    out = tmp_path / "o.mp4"
    report = tmp_path / "r.json"
    code, _ = run_cli(caplog, "--source", str(clip), "--output", str(out), "--report", str(report))
    frames = probe(out)["video_frames"]
    assert 10 <= frames < 60  # what was there, and nothing invented
    assert json.loads(report.read_text())["frames"]["out"] == frames
    if suffix != ".ts":  # a transport stream declares no length, so its end looks like any other end
        assert code == EXIT_FAILED
        assert any("ends early" in r.getMessage() for r in caplog.records)


def test_corrupt_packets_are_skipped_and_counted(tmp_path, caplog):
    clip = make_clip(tmp_path / "in.ts", frames=60)
    data = bytearray(clip.read_bytes())
    for offset in range(len(data) // 3, 2 * len(data) // 3, 997):  # scribble over the middle third
        data[offset] ^= 0x5A
    damaged = tmp_path / "damaged.ts"
    damaged.write_bytes(bytes(data))
    report = tmp_path / "r.json"
    code, _ = run_cli(caplog, "--source", str(damaged), "--output", str(tmp_path / "o.mp4"), "--report", str(report))
    assert code == EXIT_OK
    stats = json.loads(report.read_text())["source_stats"]
    assert stats["corrupt_packets"] > 0
    assert probe(tmp_path / "o.mp4")["video_frames"] >= 30


def test_unsupported_codec(tmp_path, caplog):
    clip = make_clip(tmp_path / "in.mp4")
    strange = tmp_path / "strange.mp4"
    strange.write_bytes(clip.read_bytes().replace(b"avc1", b"zzzz"))  # a codec tag no decoder claims
    code, errors = run_cli(caplog, "--source", str(strange), "--output", str(tmp_path / "o.mp4"))
    assert code == EXIT_USAGE and "unsupported video codec" in errors[0]


def test_odd_size_is_cropped_to_even(tmp_path, caplog):
    clip = make_clip(tmp_path / "odd.mkv", size=(641, 479), codec="ffv1")
    code, _ = run_cli(caplog, "--source", str(clip), "--output", str(tmp_path / "o.mp4"))
    assert code == EXIT_OK
    assert probe(tmp_path / "o.mp4")["size"] == (640, 478)
    assert any("cropped to 640x478" in r.getMessage() for r in caplog.records)


def test_ten_bit_input_is_converted(tmp_path, caplog):
    clip = make_clip(tmp_path / "ten.mkv", codec="ffv1", pix_fmt="yuv420p10le", audio=False)
    code, _ = run_cli(caplog, "--source", str(clip), "--output", str(tmp_path / "o.mp4"))
    assert code == EXIT_OK
    got, want = probe(tmp_path / "o.mp4"), probe(clip)
    assert got["video_frames"] == 30
    assert abs(int(got["first"][..., 0].mean()) - int(want["first"][..., 0].mean())) <= 3


def test_a_turned_picture_comes_out_upright_as_ffmpeg_writes_it(tmp_path, caplog):
    """A display matrix of 270° (−90°): players turn the stored picture a quarter clockwise.
    ffmpeg turns the pixels and writes no turn; so do we, and the file plays the same."""
    clip = make_clip(tmp_path / "rot.mp4", rotation=270, corner_mark=True)
    assert run_cli(caplog, "--source", str(clip), "--output", str(tmp_path / "o.mkv"))[0] == EXIT_OK
    got, stored = probe(tmp_path / "o.mkv"), probe(clip)
    assert got["rotation"] == 0 and got["size"] == (96, 160)
    upright = np.rot90(stored["first"], -1)  # what a player shows of the input
    assert np.abs(got["first"].astype(int) - upright).mean() < 4


def test_audio_only_and_video_only(tmp_path, caplog):
    for name, kwargs in (("a.mp4", {"video": False}), ("v.mp4", {"audio": False})):
        clip = make_clip(tmp_path / name, **kwargs)
        assert run_cli(caplog, "--source", str(clip), "--output", str(tmp_path / f"out_{name}"))[0] == EXIT_OK
    assert probe(tmp_path / "out_a.mp4")["audio_s"] == pytest.approx(1.0, abs=0.05)
    assert probe(tmp_path / "out_v.mp4")["video_frames"] == 30


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_output_that_is_not_writable(tmp_path, caplog):
    clip = make_clip(tmp_path / "in.mp4")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    code, errors = run_cli(caplog, "--source", str(clip), "--output", str(locked / "o.mp4"))
    assert code == EXIT_FAILED and "not writable" in errors[0]


def test_output_into_a_file_instead_of_a_directory(tmp_path, caplog):
    clip = make_clip(tmp_path / "in.mp4")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, errors = run_cli(caplog, "--source", str(clip), "--output", str(blocker / "o.mp4"))
    assert code == EXIT_FAILED and str(blocker) in errors[0]


@pytest.mark.parametrize("how", ["same path", "dot-dot", "symbolic link", "hard link", "analytics"])
def test_an_output_that_is_the_source_itself_is_refused_before_anything_opens(tmp_path, caplog, how):
    clip = make_clip(tmp_path / "clip.mp4", frames=10)
    before = clip.read_bytes()
    (tmp_path / "sub").mkdir()
    output, extra = str(clip), []
    if how == "dot-dot":
        output = str(tmp_path / "sub" / ".." / "clip.mp4")
    elif how == "symbolic link":
        (tmp_path / "link.mp4").symlink_to(clip)
        output = str(tmp_path / "link.mp4")
    elif how == "hard link":
        os.link(clip, tmp_path / "hard.mp4")
        output = str(tmp_path / "hard.mp4")
    elif how == "analytics":
        output, extra = str(tmp_path / "out.mp4"), ["--analytics", str(clip)]
    code, errors = run_cli(caplog, "--source", str(clip), "--output", output, *extra)
    assert code == EXIT_USAGE and "is the source file" in errors[0]
    assert clip.read_bytes() == before
    written = {p.name for p in tmp_path.iterdir() if p.is_file()}
    assert written <= {"clip.mp4", "link.mp4", "hard.mp4"}  # no output, no partial file


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_output_under_a_special_filesystem_says_the_path_cannot_be_written(tmp_path, caplog):
    clip = make_clip(tmp_path / "in.mp4", frames=5)
    code, errors = run_cli(caplog, "--source", str(clip), "--output", "/proc/out.mp4")
    assert code == EXIT_FAILED and "the path cannot be written" in errors[0]
    assert "libx264" not in errors[0]  # not the encoders: they were never the problem
