"""Folder runs: every video, names kept, finished outputs skipped, bad files listed, not fatal."""

from __future__ import annotations

import json
from pathlib import Path

from media_kit import make_clip, probe

from pipeline.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main


def folder(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    make_clip(source / "a.mp4", frames=20)
    make_clip(source / "b.mkv", frames=25)
    (source / "notes.txt").write_text("not a video, not picked up")
    return source


def test_folder_run_processes_every_video_and_keeps_names(tmp_path, caplog):
    source, out = folder(tmp_path), tmp_path / "out"
    report = tmp_path / "report.json"
    assert main(["--source", str(source), "--output", str(out), "--report", str(report)]) == EXIT_OK
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "b.mp4"]
    assert probe(out / "a.mp4")["video_frames"] == 20 and probe(out / "b.mp4")["video_frames"] == 25
    data = json.loads(report.read_text())
    assert data["counts"] == {"ok": 2} and data["frames_out"] == 45


def test_finished_outputs_are_skipped_unless_overwrite(tmp_path, caplog):
    source, out = folder(tmp_path), tmp_path / "out"
    assert main(["--source", str(source), "--output", str(out)]) == EXIT_OK
    stamp = (out / "a.mp4").stat().st_mtime_ns
    report = tmp_path / "report.json"
    assert main(["--source", str(source), "--output", str(out), "--report", str(report)]) == EXIT_OK
    assert json.loads(report.read_text())["counts"] == {"skipped": 2}
    assert (out / "a.mp4").stat().st_mtime_ns == stamp
    assert main(["--source", str(source), "--output", str(out), "--overwrite", "--report", str(report)]) == EXIT_OK
    assert json.loads(report.read_text())["counts"] == {"ok": 2}


def test_a_bad_file_is_listed_and_the_rest_still_run(tmp_path, caplog):
    source, out = folder(tmp_path), tmp_path / "out"
    (source / "broken.mp4").write_text("this is text")
    report = tmp_path / "report.json"
    assert main(["--source", str(source), "--output", str(out), "--report", str(report)]) == EXIT_FAILED
    data = json.loads(report.read_text())
    assert data["counts"] == {"ok": 2, "failed": 1}
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "b.mp4"]  # no half-made broken.mp4
    assert any("failed: " in r.getMessage() and "broken.mp4" in r.getMessage() for r in caplog.records)


def test_folder_with_no_videos(tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")
    assert main(["--source", str(empty), "--output", str(tmp_path / "out")]) == EXIT_USAGE
    assert any("no video files" in r.getMessage() for r in caplog.records)


def test_analytics_for_a_folder_go_one_file_per_video(tmp_path, caplog):
    source, out, analytics = folder(tmp_path), tmp_path / "out", tmp_path / "analytics"
    assert main(["--source", str(source), "--output", str(out), "--analytics", str(analytics)]) == EXIT_OK
    lines = (analytics / "b.jsonl").read_text().splitlines()
    assert len(lines) == 25 and json.loads(lines[0])["frame"] == 0
    assert sorted(p.name for p in analytics.iterdir()) == ["a.jsonl", "b.jsonl"]  # renamed once complete


def test_an_output_that_cannot_be_made_fails_each_file_and_the_report_still_lists_them(tmp_path, caplog):
    source = folder(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder's parent should be")
    report = tmp_path / "report.json"
    code = main(["--source", str(source), "--output", str(blocker / "out"), "--report", str(report)])
    assert code == EXIT_FAILED
    data = json.loads(report.read_text())
    assert data["counts"] == {"failed": 2}
    assert all("cannot create directory" in f["reason"] for f in data["files"])


def test_a_folder_run_stopped_mid_file_keeps_that_file_and_its_analytics_as_partial(tmp_path):
    import asyncio

    import torch

    from pipeline.config import load_config
    from pipeline.job import FolderItem, JobOptions, run_folder

    source, out = folder(tmp_path), tmp_path / "out"
    analytics = tmp_path / "analytics"
    items = [
        FolderItem(source / name, out / f"{Path(name).stem}.mp4", analytics / f"{Path(name).stem}.jsonl")
        for name in ("a.mp4", "b.mkv")
    ]
    # Paced at the files' own rate, so the stop lands a few frames into the first file.
    options = JobOptions(config=load_config("passthrough"), device=torch.device("cpu"), realtime=True)
    stopped = []

    def on_start(pipeline):
        def stop():
            stopped.append(True)
            pipeline.request_stop()

        asyncio.get_running_loop().call_later(0.25, stop)

    results = asyncio.run(run_folder(items, options, on_start=on_start, stopped=lambda: bool(stopped)))
    assert [r.status for r in results] == ["interrupted"]  # b.mkv never started
    assert not (out / "a.mp4").exists()  # a final name always means complete: the next run redoes it
    partial = out / "a.partial.mp4"
    assert results[0].output == str(partial)
    frames = probe(partial)["video_frames"]
    assert 0 < frames < 20
    assert frames == results[0].frames_out
    # The analytics of the cut-short file are not under a final name either, and hold what was written.
    assert not (analytics / "a.jsonl").exists()
    assert len((analytics / "a.partial.jsonl").read_text().splitlines()) == frames


def test_a_list_file_names_the_videos_to_run(tmp_path):
    source = folder(tmp_path)
    listing = tmp_path / "todo.txt"
    listing.write_text(f"# tonight\nin/a.mp4\n\n{source / 'b.mkv'}\n")
    out = tmp_path / "out"
    assert main(["--source", str(listing), "--output", str(out)]) == EXIT_OK
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "b.mp4"]


def test_a_list_naming_a_missing_file_or_ray_without_a_folder_is_one_line(tmp_path, caplog):
    listing = tmp_path / "todo.txt"
    listing.write_text("nowhere.mp4\n")
    assert main(["--source", str(listing), "--output", str(tmp_path / "out")]) == EXIT_USAGE
    assert "todo.txt line 1: nowhere.mp4: no such file" in caplog.text
    assert main(["--source", "sample", "--ray", "auto"]) == EXIT_USAGE
    assert "--ray: needs a folder or a list" in caplog.text


def test_a_damaged_file_in_a_folder_keeps_its_partial_name_and_is_redone_next_time(tmp_path):
    from media_kit import cut

    source, out = folder(tmp_path), tmp_path / "out"
    cut(make_clip(tmp_path / "whole.mkv", frames=60), 0.5, source / "c.mkv")
    report = tmp_path / "report.json"
    assert main(["--source", str(source), "--output", str(out), "--report", str(report)]) == EXIT_FAILED
    assert json.loads(report.read_text())["counts"] == {"ok": 2, "partial": 1}
    assert not (out / "c.mp4").exists()  # a final name means complete: a later run would skip it
    assert 0 < probe(out / "c.partial.mp4")["video_frames"] < 60  # what could be decoded, still playable
    assert main(["--source", str(source), "--output", str(out), "--report", str(report)]) == EXIT_FAILED
    assert json.loads(report.read_text())["counts"] == {"skipped": 2, "partial": 1}  # not forgotten
