"""Hardware codecs on a CUDA run: NVDEC decodes into GPU ring slots, NVENC encodes, both match the CPU path.

Skipped with a reason on machines without a CUDA device (the CPU path is tested everywhere
else); run them where `nvidia-smi` works.
"""

from __future__ import annotations

import asyncio

import av
import numpy as np
import pytest
import torch
from media_kit import make_clip, probe

from pipeline.config import load_config
from pipeline.executor import Pipeline
from pipeline.graph import build_graph
from pipeline.io.media import MediaSource
from pipeline.io.sinks import EncoderSettings, FileSink
from pipeline.ringbuffer import RingBuffer

HAS_CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device; the CPU path is tested beside it")
CUDA = torch.device("cuda")


def ffmpeg_has_cuda() -> bool:
    return "cuda" in av.codec.hwaccel.hwdevices_available()


def transcode(source, output, device: torch.device) -> dict:
    pipeline = Pipeline(
        build_graph(load_config("passthrough")),
        MediaSource(source, device=device),
        FileSink(output, settings=EncoderSettings(crf=18), device=device),
        device=device,
    )
    return asyncio.run(pipeline.run())


def test_nvdec_writes_pictures_into_gpu_slots_that_match_the_software_decoder(tmp_path):
    if not ffmpeg_has_cuda():
        pytest.skip("this FFmpeg build has no CUDA hwaccel")
    clip = make_clip(tmp_path / "in.mp4", frames=10, size=(320, 240))
    gpu, cpu = MediaSource(clip, device=CUDA), MediaSource(clip)
    assert "NVDEC" in gpu.info.description

    async def first_frames(source, device):
        ring = RingBuffer(4, source.info.frame_shape, device=device)
        pictures = []
        async for frame in source.frames(ring):
            assert frame.image.device.type == device.type
            pictures.append(frame.image.cpu().numpy().copy())
            frame.release()
        return pictures

    got = asyncio.run(first_frames(gpu, CUDA))
    want = asyncio.run(first_frames(cpu, torch.device("cpu")))
    gpu.close()
    cpu.close()
    assert len(got) == len(want) == 10
    for a, b in zip(got, want, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0


def test_a_cuda_run_encodes_with_nvenc_or_says_why_not(tmp_path, caplog):
    clip = make_clip(tmp_path / "in.mp4", frames=30, size=(320, 240))
    report = transcode(clip, tmp_path / "out.mp4", CUDA)
    assert report["frames"]["out"] == 30 and report["leaked_slots"] == 0
    encoder = report["sink_description"].split(" + ")[0]
    fell_back = any("encoding with libx264 instead" in r.getMessage() for r in caplog.records)
    assert encoder == "h264_nvenc" or (encoder == "libx264" and fell_back)
    got, want = probe(tmp_path / "out.mp4"), probe(clip)
    assert got["video_frames"] == 30 and got["size"] == want["size"]
    assert np.abs(got["first"].astype(int) - want["first"].astype(int)).mean() < 6


def test_cuda_and_cpu_runs_write_the_same_frames(tmp_path):
    clip = make_clip(tmp_path / "in.mp4", frames=30, size=(320, 240))
    transcode(clip, tmp_path / "gpu.mp4", CUDA)
    transcode(clip, tmp_path / "cpu.mp4", torch.device("cpu"))
    gpu, cpu = probe(tmp_path / "gpu.mp4"), probe(tmp_path / "cpu.mp4")
    assert gpu["video_frames"] == cpu["video_frames"] == 30
    assert gpu["pts"] == cpu["pts"]
    assert gpu["audio_s"] == pytest.approx(cpu["audio_s"], abs=0.05)
