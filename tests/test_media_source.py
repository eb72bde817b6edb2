"""Files through the whole pipeline: what comes out matches what went in, in every container."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from media_kit import clip_with_audio, make_clip, probe

from pipeline.config import load_config
from pipeline.executor import Pipeline
from pipeline.frames import AudioChunk
from pipeline.graph import build_graph
from pipeline.io.analytics import AnalyticsSink
from pipeline.io.audio_align import AudioAligner, ChunkResampler
from pipeline.io.media import MediaSource
from pipeline.io.sinks import EncoderSettings, FileSink, NullSink


def transcode(source: Path, output: Path, config: str = "passthrough", **source_args) -> dict:
    pipeline = Pipeline(
        build_graph(load_config(config)),
        MediaSource(source, **source_args),
        FileSink(output, settings=EncoderSettings(crf=18, preset="ultrafast")),
    )
    return asyncio.run(pipeline.run())


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov", ".ts", ".webm"])
def test_every_container_transcodes_frame_for_frame_with_its_audio(tmp_path, suffix):
    codec = "libvpx-vp9" if suffix == ".webm" else "libx264"
    clip = make_clip(tmp_path / f"in{suffix}", frames=30, codec=codec, audio=suffix != ".webm")
    report = transcode(clip, tmp_path / "out.mp4")
    assert report["frames"]["out"] == 30 and report["leaked_slots"] == 0
    got, want = probe(tmp_path / "out.mp4"), probe(clip)
    assert got["video_frames"] == 30 and got["size"] == (160, 96)
    assert got["audio_s"] == pytest.approx(want["audio_s"], abs=0.05)
    error = (torch.from_numpy(got["first"]).float() - torch.from_numpy(want["first"]).float()).abs().mean()
    assert float(error) < 6


def test_timestamps_survive_including_variable_frame_rate(tmp_path):
    # Pictures at irregular times: the output must keep each one's time, not renumber them.
    from fractions import Fraction

    import av
    import numpy as np

    clip = tmp_path / "vfr.mkv"
    times_ms = [0, 33, 66, 150, 170, 400, 433, 900]
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for t in times_ms:
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), t % 256, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    transcode(clip, tmp_path / "out.mkv")
    got = probe(tmp_path / "out.mkv")
    seconds = [round(float(p * got["time_base"]) * 1000) for p in got["pts"]]
    assert seconds == times_ms


@pytest.mark.parametrize(("rotation", "turns"), [(90, 1), (-90, 3), (180, 2)])
def test_a_picture_stored_turned_is_turned_upright_as_players_show_it(tmp_path, rotation, turns):
    """The display matrix's angle is counter-clockwise (ffmpeg's own output for 90°, −90° and
    180° is `np.rot90(stored, 1, 3, 2)`): the stream has the shown size and no turn left."""
    clip = make_clip(tmp_path / "rot.mp4", rotation=rotation, corner_mark=True)
    source = MediaSource(clip)
    try:
        assert source.info.rotation == 0
        assert (source.info.width, source.info.height) == ((96, 160) if turns % 2 else (160, 96))
    finally:
        source.close()
    transcode(clip, tmp_path / "out.mp4")
    got, stored = probe(tmp_path / "out.mp4"), probe(clip)
    assert got["rotation"] == 0
    upright = np.rot90(stored["first"], turns)
    assert got["size"] == (upright.shape[1], upright.shape[0])
    assert np.abs(got["first"].astype(int) - upright).mean() < 4


def test_audio_chunks_tile_the_track_without_gaps_and_follow_the_video(tmp_path):
    clip = make_clip(tmp_path / "in.mp4", frames=45)
    source = MediaSource(clip)
    sink = NullSink()
    chunks: list[AudioChunk] = []
    original = sink.write

    async def keep(frame):
        chunks.append(frame.audio)
        await original(frame)

    sink.write = keep
    asyncio.run(Pipeline(build_graph(load_config("passthrough")), source, sink).run())
    assert len(chunks) == 45
    for before, after in itertools.pairwise(chunks):
        assert after.pts == before.pts + before.samples.shape[-1]  # contiguous
    per_frame = 48000 / 30
    inner = [c.samples.shape[-1] for c in chunks[1:-1]]
    assert all(abs(n - per_frame) <= 1024 for n in inner)  # about one frame's worth each


def test_analytics_sidecar_has_one_line_per_frame_with_stage_annotations(tmp_path):
    clip = make_clip(tmp_path / "in.mp4", frames=12)
    jsonl = tmp_path / "frames.jsonl"
    sink = AnalyticsSink(NullSink(), jsonl)
    asyncio.run(Pipeline(build_graph(load_config("default")), MediaSource(clip), sink).run())
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(12))
    assert records[3]["time_s"] == pytest.approx(3 / 30, abs=1e-3)
    assert {"frame_stats", "audio_level", "meters"} <= set(records[0])
    assert records[5]["audio_level"]["rms_dbfs"] == pytest.approx(-13.5, abs=1.0)  # 0.3 amplitude sine


def test_frame_limit_and_realtime_pacing(tmp_path):
    clip = make_clip(tmp_path / "in.mp4", frames=30)
    report = transcode(clip, tmp_path / "out.mp4", frames=9, realtime=True)
    assert report["frames"]["out"] == 9
    assert report["wall_s"] >= 8 / 30 * 0.9  # paced at 30 fps, not as fast as it can go


def test_audio_only_and_video_only_files(tmp_path):
    audio_only = make_clip(tmp_path / "a.mp4", video=False)
    video_only = make_clip(tmp_path / "v.mp4", audio=False)
    transcode(audio_only, tmp_path / "a_out.mp4", config="default")
    transcode(video_only, tmp_path / "v_out.mp4", config="default")
    a, v = probe(tmp_path / "a_out.mp4"), probe(tmp_path / "v_out.mp4")
    assert a["video_frames"] == 0 and a["audio_s"] == pytest.approx(1.0, abs=0.05)
    assert v["video_frames"] == 30 and v["audio_s"] == 0


def test_aligner_cuts_at_requested_sample_boundaries():
    aligner = AudioAligner(1000, 1)
    aligner.push(torch.arange(300, dtype=torch.float32).numpy()[None], 100)
    assert not aligner.ready(450) and aligner.ready(400)
    first = aligner.take(250)
    assert (first.pts, first.samples.shape[-1], float(first.samples[0, 0])) == (100, 150, 0.0)
    aligner.push(torch.zeros((1, 50)).numpy(), None)
    rest = aligner.take(None)
    assert (rest.pts, rest.samples.shape[-1]) == (250, 200)
    assert aligner.take(None) is None


def test_chunk_resampler_gives_16k_mono_of_the_right_length():
    resampler = ChunkResampler(16000, 1)
    total = 0
    for i in range(10):
        stereo = torch.rand((2, 1600)) - 0.5
        out = resampler(AudioChunk(stereo, 48000, i * 1600))
        assert out.samples.shape[0] == 1 and out.sample_rate == 16000
        total += out.samples.shape[-1]
    assert abs(total - 10 * 1600 // 3) <= 64  # the resampler's filter delay holds back a few samples


def test_a_failing_sink_leaves_no_slot_leased_and_the_reader_stops(tmp_path):
    from pipeline.errors import SinkError

    class FailingSink(NullSink):
        async def write(self, frame):
            if frame.index == 5:
                raise OSError("disk full")
            await super().write(frame)

    pipeline = Pipeline(build_graph(load_config("default")), MediaSource(make_clip(tmp_path / "in.mp4")), FailingSink())
    with pytest.raises(SinkError, match="disk full"):
        asyncio.run(pipeline.run())
    assert pipeline.ring.in_use == 0


def test_a_cancel_during_the_source_cleanup_still_gives_every_slot_back(tmp_path):
    """The pipeline cancels its tasks on shutdown, which can land while the source is closing."""
    from pipeline.ringbuffer import RingBuffer

    source = MediaSource(make_clip(tmp_path / "in.mp4"))
    ring = RingBuffer(8, source.info.frame_shape)

    async def run():
        frames = source.frames(ring)
        frame = await anext(frames)
        frame.release()
        closing = asyncio.create_task(frames.aclose())
        await asyncio.sleep(0)  # the cleanup starts, and waits for the reader thread
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing

    asyncio.run(run())
    source.close()
    assert ring.in_use == 0


def test_an_http_url_is_transcoded_like_a_file(tmp_path):
    from http.server import SimpleHTTPRequestHandler

    from conftest import serve_http

    from pipeline.cli import EXIT_OK, main

    served = tmp_path / "www"
    served.mkdir()
    make_clip(served / "talk.mp4", frames=30, options={"movflags": "faststart"})  # index first: streamable

    server, base = serve_http(SimpleHTTPRequestHandler, directory=str(served))
    try:
        url = f"{base}/talk.mp4"
        assert main(["--source", url, "--output", str(tmp_path / "out.mp4"), "--config", "passthrough"]) == EXIT_OK
    finally:
        server.shutdown()
        server.server_close()
    got, want = probe(tmp_path / "out.mp4"), probe(served / "talk.mp4")
    assert got["video_frames"] == 30 and got["size"] == want["size"]
    assert got["audio_s"] == pytest.approx(want["audio_s"], abs=0.05)


def test_an_http_url_that_is_not_there_is_one_line(tmp_path, caplog):
    from http.server import SimpleHTTPRequestHandler

    from conftest import serve_http

    from pipeline.cli import EXIT_USAGE, main

    server, base = serve_http(SimpleHTTPRequestHandler, directory=str(tmp_path))
    try:
        url = f"{base}/missing.mp4"
        assert main(["--source", url, "--output", str(tmp_path / "out.mp4")]) == EXIT_USAGE
    finally:
        server.shutdown()
        server.server_close()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors and "missing.mp4" in errors[-1] and "404" in errors[-1] and "\n" not in errors[-1]
    assert not (tmp_path / "out.mp4").exists()


def test_a_cuda_run_decodes_in_software_when_nvdec_cannot_start(tmp_path):
    """Where FFmpeg cannot open a CUDA device (as on any machine without one), decoding goes on in software."""
    import av

    if "cuda" not in av.codec.hwaccel.hwdevices_available():
        pytest.skip("this FFmpeg build has no CUDA hwaccel to fail")
    if torch.cuda.is_available():
        pytest.skip("NVDEC can start here; tests/test_gpu_media.py covers it")
    source = MediaSource(make_clip(tmp_path / "in.mp4"), device=torch.device("cuda"))
    try:
        assert "software decoder: NVDEC could not start (" in source.info.description
        assert source.info.width == 160
    finally:
        source.close()


def test_clicks_stay_on_their_frames_through_the_pipeline(tmp_path):
    """A/V sync: short clicks placed at known frames are heard at the same frames after a transcode (±1)."""
    import av
    import numpy as np

    fps, rate, frames, clicks = 30, 48000, 120, (10, 47, 90)
    per_frame = rate // fps
    audio = np.zeros(frames * per_frame, np.float32)
    for index in clicks:
        audio[index * per_frame : index * per_frame + 240] = 0.8  # 5 ms burst at the frame's start
    source = clip_with_audio(tmp_path / "clicks.mkv", audio, rate=rate, fps=fps)
    transcode(source, tmp_path / "out.mp4")

    def heard(path):
        with av.open(str(path)) as container:
            first_video = next(container.decode(video=0)).time
        with av.open(str(path)) as container:
            chunks = list(container.decode(audio=0))
        start = chunks[0].time
        samples = np.concatenate([c.to_ndarray()[0] for c in chunks])
        loud = np.flatnonzero(np.abs(samples) > 0.4)
        onsets = loud[np.concatenate(([True], np.diff(loud) > rate // 10))]  # first sample of each click
        return [round((start + i / rate - first_video) * fps) for i in onsets]

    assert heard(source) == list(clicks)
    got = heard(tmp_path / "out.mp4")
    assert len(got) == len(clicks) and all(abs(a - b) <= 1 for a, b in zip(got, clicks, strict=True)), got


def test_a_network_stream_is_live_and_an_http_file_is_not(tmp_path):
    """An http stream with no duration (a live broadcast) comes at the sender's pace: the run gets the
    scheduler, and a slow graph drops stale pictures rather than holding the stream back; an http URL
    of a plain file with a duration is still read as a file, every frame."""
    import time
    from http.server import BaseHTTPRequestHandler

    from conftest import serve_http
    from stage_kit import graph_of

    broadcast = make_clip(tmp_path / "live.ts", frames=60).read_bytes()
    recording = make_clip(tmp_path / "talk.mp4", frames=30, options={"movflags": "faststart"}).read_bytes()

    class Sender(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # no length, no chunks: the stream ends when the sender closes it

        def do_GET(self):
            self.send_response(200)
            if self.path == "/live.ts":
                self.send_header("Content-Type", "video/mp2t")
                self.end_headers()
                for at in range(0, len(broadcast), 4096):  # at its own pace, whoever is watching
                    self.wfile.write(broadcast[at : at + 4096])
                    time.sleep(0.01)
            else:
                self.send_header("Content-Length", str(len(recording)))
                self.end_headers()
                self.wfile.write(recording)

    server, base = serve_http(Sender)
    try:
        recorded = MediaSource(f"{base}/talk.mp4")
        assert not recorded.live and not recorded.stream
        recorded.close()
        source = MediaSource(f"{base}/live.ts", realtime=True)
        assert source.live and source.stream and not source.realtime
        graph = graph_of([{"name": "slow", "type": "costly", "options": {"cost_ms": 60.0}}])
        heard = SoundCounter()
        report = asyncio.run(Pipeline(graph, source, heard).run())
    finally:
        server.shutdown()
        server.server_close()
    assert report["quality"]["enabled"]  # deadlines and the control loop, as for a camera
    stale = report["source_stats"]["stale_dropped"]
    # It never waited for the slow stage; the sound of pictures dropped after the last one taken
    # comes as one last frame of sound alone.
    assert stale > 0 and report["frames"]["in"] + stale == 60 + heard.sound_only and heard.sound_only <= 1
    # The sound of every picture dropped on arrival rides on a later frame: none of it is lost.
    everything = SoundCounter()
    asyncio.run(Pipeline(graph_of([]), MediaSource(tmp_path / "live.ts"), everything).run())
    assert everything.samples > 0
    assert heard.samples == everything.samples


class SoundCounter(NullSink):
    """Counts the audio samples of the frames written."""

    def __init__(self) -> None:
        super().__init__()
        self.samples = 0
        self.sound_only = 0  # frames the source gave with no picture

    async def write(self, frame) -> None:
        await super().write(frame)
        if frame.audio is not None:
            self.samples += frame.audio.samples.shape[-1]
        if frame.lease is None and frame.drop_reason is None:
            self.sound_only += 1


def test_stream_urls_are_live_whatever_they_state():
    from types import SimpleNamespace

    from pipeline.io.media import is_live_stream

    known, unknown = SimpleNamespace(duration=2_000_000), SimpleNamespace(duration=None)
    for url in ("rtsp://cam/1", "rtmp://host/app/key", "udp://239.0.0.1:5000", "srt://host:9000", "tcp://h:1"):
        assert is_live_stream(url, known), url
    assert is_live_stream("https://cdn/live/index.m3u8", unknown)
    assert not is_live_stream("https://cdn/vod/index.m3u8", known)
    assert not is_live_stream("/videos/talk.mp4", unknown) and not is_live_stream("file:///v/talk.ts", unknown)


def test_a_turn_that_is_no_quarter_is_left_to_players_and_said(tmp_path, caplog):
    clip = make_clip(tmp_path / "tilted.mp4", rotation=45, corner_mark=True)
    source = MediaSource(clip)
    try:
        assert source.info.rotation == 45 and (source.info.width, source.info.height) == (160, 96)
    finally:
        source.close()
    assert "not a multiple of 90°" in caplog.text
