"""What a file holds comes out of a transcode: every picture and every second of sound PyAV decodes
from the input, within one frame and 20 ms of sound, as ffmpeg would keep them."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest
from media_kit import (
    clip_with_spans,
    cut,
    decodable_pictures,
    flash_and_click,
    flashes_and_clicks,
    grey_streams,
    make_clip,
    many_streams,
    probe,
    streams_of,
)

from pipeline.cli import EXIT_FAILED, EXIT_OK, main

SOUND_S = 0.02  # the sound a transcode may gain or lose (encoder padding)


def transcode(source, output, config: str = "passthrough") -> dict:
    assert main(["--config", config, "--source", str(source), "--output", str(output)]) == EXIT_OK
    return probe(output)


@pytest.mark.parametrize(
    ("video_s", "audio_s", "audio_start_s", "suffix"),
    [
        (2.0, 4.0, 0.0, ".mp4"),  # sound that outlasts the picture
        (2.0, 4.0, 0.0, ".mkv"),
        (2.0, 2.0, 0.0, ".mov"),  # the ordinary case stays as it was
    ],
)
def test_every_picture_and_all_the_sound_come_out(tmp_path, video_s, audio_s, audio_start_s, suffix):
    source = clip_with_spans(tmp_path / f"in{suffix}", video_s=video_s, audio_s=audio_s, audio_start_s=audio_start_s)
    held = probe(source)
    out = transcode(source, tmp_path / "out.mp4")
    assert abs(out["video_frames"] - held["video_frames"]) <= 1
    assert out["audio_s"] == pytest.approx(held["audio_s"], abs=SOUND_S)


def test_sound_that_starts_late_and_runs_past_the_last_picture_is_all_kept(tmp_path):
    source = clip_with_spans(tmp_path / "in.mp4", video_s=2.0, audio_s=1.0, audio_start_s=1.5)
    held = probe(source)
    out = transcode(source, tmp_path / "out.mp4")
    assert out["video_frames"] == held["video_frames"]
    assert out["audio_s"] >= held["audio_s"] - SOUND_S  # none of it lost


def test_the_full_graph_keeps_the_sound_after_the_last_picture_too(tmp_path):
    source = clip_with_spans(tmp_path / "in.mp4", video_s=1.0, audio_s=2.5)
    held = probe(source)
    out = transcode(source, tmp_path / "out.mp4", config="default")
    assert out["video_frames"] == held["video_frames"]
    assert out["audio_s"] == pytest.approx(held["audio_s"], abs=SOUND_S)


# Containers, rates, channel layouts and the sound's place against the picture, as inputs come.
MATRIX = [
    # suffix, codec, rate, layout, video_start_s, audio_start_s
    (".mkv", "aac", 8000, "mono", 0.0, 0.0),
    (".mov", "aac", 22050, "stereo", 0.0, 0.0),
    (".ts", "aac", 44100, "stereo", 0.0, 0.0),
    (".mp4", "aac", 48000, "5.1", 0.0, 0.0),
    (".mkv", "aac", 16000, "5.1(side)", 0.0, 0.0),
    (".webm", "libopus", 48000, "stereo", 0.0, 0.0),
    (".webm", "libopus", 16000, "mono", 0.0, 0.0),
    (".mp4", "aac", 44100, "stereo", 0.5, 0.0),  # sound before the picture
    (".mkv", "aac", 48000, "mono", 0.0, 0.5),  # sound after it
    (".ts", "aac", 32000, "stereo", 0.3, 0.0),
]


@pytest.mark.parametrize(("suffix", "codec", "rate", "layout", "video_start_s", "audio_start_s"), MATRIX)
def test_what_a_file_holds_comes_out_whatever_its_container_rate_and_channels(
    tmp_path, suffix, codec, rate, layout, video_start_s, audio_start_s
):
    source = clip_with_spans(
        tmp_path / f"in{suffix}",
        video_s=2.0,
        audio_s=2.0,
        rate=rate,
        layout=layout,
        codec=codec,
        video_start_s=video_start_s,
        audio_start_s=audio_start_s,
    )
    held = probe(source)
    out = transcode(source, tmp_path / "out.mkv")
    assert abs(out["video_frames"] - held["video_frames"]) <= 1
    assert out["audio_s"] == pytest.approx(held["audio_s"], abs=SOUND_S)
    assert (out["audio_rate"], out["audio_channels"]) == (held["audio_rate"], held["audio_channels"])
    with av.open(str(tmp_path / "out.mkv")) as container:
        starts = {s.type: float(s.start_time * s.time_base) for s in container.streams}
        duration_s = container.duration / av.time_base
    # The output starts at 0, with the sound and the picture as far apart as they were.
    lead = video_start_s - audio_start_s
    assert starts["video"] - starts["audio"] == pytest.approx(lead, abs=1 / 30 + 0.03)
    assert min(starts.values()) == pytest.approx(0.0, abs=0.03)
    ends = (video_start_s + held["video_frames"] / 30, audio_start_s + held["audio_s"])
    priming_s = 1024 / rate  # an AAC encoder's delay, which Matroska (no edit list) counts in the length
    assert duration_s == pytest.approx(max(ends) - min(video_start_s, audio_start_s), abs=0.03 + priming_s)


def test_the_avatar_speaks_from_the_front_of_a_surround_input(tmp_path):
    pytest.importorskip("espeakng_loader", reason="the avatar's voice needs eSpeak NG (the speech extra)")
    source = clip_with_spans(tmp_path / "in.mp4", video_s=2.0, audio_s=2.0, layout="5.1", amplitude=0.0)
    out = tmp_path / "out.mkv"
    args = ["--source", str(source), "--output", str(out), "--say", "Hello there, can you hear me?"]
    assert main(args) == EXIT_OK
    with av.open(str(out)) as container:
        layout = container.streams.audio[0].codec_context.layout
        samples = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    names = [channel.name for channel in layout.channels]
    loudness = dict(zip(names, np.sqrt(np.mean(samples**2, axis=1)), strict=True))
    assert names == ["FL", "FR", "FC", "LFE", "BL", "BR"]  # still 5.1, in its order
    assert min(loudness[n] for n in ("FL", "FR", "FC")) > 0.01, loudness  # the voice, in front
    assert max(loudness[n] for n in ("LFE", "BL", "BR")) < 1e-3, loudness  # and nowhere else


@pytest.mark.parametrize(("start_s", "suffix"), [(3601.0, ".ts"), (3601.0, ".mkv"), (0.0, ".ts")])
def test_the_output_starts_at_zero_whatever_the_input_starts_at(tmp_path, start_s, suffix):
    source = clip_with_spans(tmp_path / f"in{suffix}", video_s=2.0, audio_s=2.0, start_s=start_s)
    held = probe(source)
    out = transcode(source, tmp_path / "out.mp4")
    with av.open(str(tmp_path / "out.mp4")) as container:
        start_s, duration_s = container.start_time / av.time_base, container.duration / av.time_base
    assert abs(start_s) < 0.05 and duration_s == pytest.approx(2.0, abs=0.05)  # no blank lead-in
    assert out["video_frames"] == held["video_frames"]
    assert out["audio_s"] == pytest.approx(held["audio_s"], abs=SOUND_S)


@pytest.mark.parametrize(
    ("second_start_s", "why"),
    [(0.0, "two recordings joined: the second starts its clock again"), (3601.0, "a clock that leaps an hour")],
)
def test_timestamps_that_jump_keep_every_frame_and_sample_on_a_timeline_that_moves_on(tmp_path, second_start_s, why):
    first = flash_and_click(tmp_path / "a.ts")  # 2 s each, a flash and a click at 1 s
    second = flash_and_click(tmp_path / "b.ts", start_s=second_start_s)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    held = probe(joined)
    out = tmp_path / "out.mp4"
    report = tmp_path / "r.json"
    assert (
        main(["--config", "passthrough", "--source", str(joined), "--output", str(out), "--report", str(report)]) == 0
    )
    made = probe(out)
    assert made["video_frames"] == held["video_frames"] == 120, why
    assert made["audio_s"] == pytest.approx(held["audio_s"], abs=SOUND_S)
    steps = np.diff(made["pts"]) * float(made["time_base"])
    assert steps.min() > 0.03, why  # one frame apart: none squeezed together
    with av.open(str(out)) as container:
        assert container.duration / av.time_base == pytest.approx(4.0, abs=0.1)  # no gap, no overlap
    flashes, clicks = flashes_and_clicks(out)
    assert flashes == pytest.approx([1.0, 3.0], abs=0.05)
    assert clicks == pytest.approx(flashes, abs=1 / 30 + 0.005)  # picture and sound still together
    assert json.loads(report.read_text())["source_stats"]["timestamp_jumps"] == 1


@pytest.mark.parametrize("fraction", [0.35, 0.5, 0.65])
def test_a_cut_file_keeps_every_picture_a_decoder_gets_from_it(tmp_path, fraction):
    # Cuts where FFmpeg's frame threads lose the pictures they hold when the cut packet fails.
    whole = make_clip(tmp_path / "in.mp4", frames=60, size=(640, 360), options={"movflags": "faststart"})
    clip = cut(whole, fraction, tmp_path / "cut.mp4")
    out = tmp_path / "out.mp4"
    assert main(["--config", "passthrough", "--source", str(clip), "--output", str(out)]) == EXIT_FAILED
    assert probe(out)["video_frames"] == decodable_pictures(clip)


@pytest.mark.parametrize("config", ["passthrough", "default"])
def test_every_stream_is_carried_into_an_mkv_with_its_language(tmp_path, config):
    source = many_streams(tmp_path / "in.mkv")  # picture, English AAC, French AC-3 stereo, SubRip
    held = streams_of(source)
    out = tmp_path / "out.mkv"
    assert main(["--config", config, "--source", str(source), "--output", str(out)]) == EXIT_OK
    made = streams_of(out)
    assert [(s["type"], s["codec"], s["language"]) for s in made] == [
        (s["type"], s["codec"], s["language"]) for s in held
    ]
    assert made[2]["audio_s"] == pytest.approx(held[2]["audio_s"], abs=SOUND_S)  # the copy is whole
    assert made[3]["packets"] == held[3]["packets"]  # each line, at its time, for as long


def test_a_stream_an_mp4_has_no_place_for_is_named_in_one_warning_and_the_rest_are_carried(tmp_path, caplog):
    source = many_streams(tmp_path / "in.mkv")
    caplog.set_level("WARNING")
    transcode(source, tmp_path / "out.mp4")
    made = streams_of(tmp_path / "out.mp4")
    assert [(s["type"], s["codec"], s["language"]) for s in made] == [
        ("video", "h264", "und"),
        ("audio", "aac", "eng"),
        ("audio", "ac3", "fre"),
    ]
    named = [r.getMessage() for r in caplog.records if "not carried through" in r.getMessage()]
    assert len(named) == 1 and "subtitle stream #3 (srt, eng)" in named[0]


def test_a_second_camera_with_b_frames_is_copied_whole_and_a_frame_limit_ends_it_too(tmp_path):
    source = many_streams(tmp_path / "in.mkv", subtitles=False, second_video=True)
    held = streams_of(source)
    out = tmp_path / "out.mkv"
    assert main(["--config", "passthrough", "--source", str(source), "--output", str(out)]) == EXIT_OK
    made = streams_of(out)
    assert [s["type"] for s in made] == ["video", "audio", "audio", "video"]
    assert made[3]["packets"] == held[3]["packets"] == 60  # every packet, in an order the muxer took
    assert main(["--config", "passthrough", "--source", str(source), "--output", str(out), "--frames", "30"]) == 0
    made = streams_of(out)
    # The copies stop where the frames do (a B-frame stream by decode time: a few packets past).
    assert made[3]["packets"] <= 33 and made[2]["audio_s"] <= 1.1, made


def test_a_timecode_track_is_named_and_the_picture_and_sound_are_whole(tmp_path, caplog):
    source = tmp_path / "camera.mov"
    with av.open(str(source), "w") as out:  # a camera's file: a timecode (tmcd) data track beside the picture
        video, sound, grey = grey_streams(out, fps=30, rate=48000)
        video.metadata["timecode"] = "01:00:00:00"
        for i in range(30):
            grey.pts, grey.time_base = i, Fraction(1, 30)
            out.mux(video.encode(grey))
            chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.float32), format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 48000, i * 1600
            out.mux(sound.encode(chunk))
        for stream in (video, sound):
            out.mux(stream.encode(None))
    held = probe(source)
    caplog.set_level("WARNING")
    made = transcode(source, tmp_path / "out.mp4")
    assert made["video_frames"] == held["video_frames"] == 30
    assert made["audio_s"] == pytest.approx(held["audio_s"], abs=SOUND_S)
    assert any("data stream #2" in r.getMessage() and "not carried" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("layout", "suffix", "kept"), [("7.1", ".mp4", "5.1"), ("5.1(side)", ".webm", "5.1")])
def test_layouts_an_encoder_or_pyav_cannot_hold_are_remixed_not_fatal(tmp_path, layout, suffix, kept):
    source = clip_with_spans(tmp_path / "in.mkv", video_s=1.0, audio_s=1.0, layout=layout)
    out = tmp_path / f"out{suffix}"
    held = probe(source)
    assert main(["--config", "passthrough", "--source", str(source), "--output", str(out)]) == EXIT_OK
    with av.open(str(out)) as container:
        assert container.streams.audio[0].codec_context.layout.name == kept
    assert probe(out)["audio_s"] == pytest.approx(held["audio_s"], abs=0.03)


def test_a_carried_stream_starts_where_the_output_starts(tmp_path):
    """A transport stream an hour in, with a second sound: both sounds start at 0, as the picture."""
    source = many_streams(tmp_path / "in.ts", subtitles=False, start_s=3601.0)
    held = streams_of(source)
    out = tmp_path / "out.mp4"
    assert main(["--config", "passthrough", "--source", str(source), "--output", str(out)]) == EXIT_OK
    with av.open(str(out)) as container:
        starts = [float(s.start_time * s.time_base) for s in container.streams]
        duration_s = container.duration / av.time_base
    assert starts == pytest.approx([0.0, 0.0, 0.0], abs=0.05) and duration_s == pytest.approx(2.0, abs=0.1)
    made = streams_of(out)
    assert made[2]["audio_s"] == pytest.approx(held[2]["audio_s"], abs=SOUND_S)
