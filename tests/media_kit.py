"""Test media made on the spot with PyAV: clips of any size, codec, layout, rotation or damage."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

RATE = 48000  # Hz


def make_clip(
    path: Path,
    *,
    frames: int = 30,
    size: tuple[int, int] = (160, 96),
    fps: int = 30,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    audio: bool = True,
    video: bool = True,
    rotation: int = 0,
    corner_mark: bool = False,
    options: dict[str, str] | None = None,
) -> Path:
    """A clip whose frame i is red level 8·i with a green bar 3·i px wide, and a 440 Hz tone.
    `corner_mark`: a white block in the stored picture's top-left corner, to tell its turns apart."""
    with av.open(str(path), "w", options=options or {}) as out:
        vs = None
        if video:
            vs = out.add_stream(codec, rate=fps)
            vs.width, vs.height = size
            vs.pix_fmt = pix_fmt
            if rotation:
                vs.set_display_rotation(rotation)
        aus = out.add_stream("aac", rate=RATE) if audio else None
        if aus is not None:
            aus.layout = "mono"
        per_frame = RATE // fps
        for i in range(frames):
            if vs is not None:
                picture = np.zeros((size[1], size[0], 3), np.uint8)
                picture[..., 0] = (i * 8) % 256
                picture[:, : (i * 3) % size[0], 1] = 200
                if corner_mark:
                    picture[: size[1] // 3, : size[0] // 4] = 255
                frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format=pix_fmt)
                frame.pts, frame.time_base = i, Fraction(1, fps)
                out.mux(vs.encode(frame))
            if aus is not None:
                t = (np.arange(per_frame) + i * per_frame) / RATE
                tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
                chunk = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = RATE, i * per_frame
                out.mux(aus.encode(chunk))
        if vs is not None:
            out.mux(vs.encode(None))
        if aus is not None:
            out.mux(aus.encode(None))
    return path


def cut(path: Path, fraction: float, to: Path) -> Path:
    """The first `fraction` of a file's bytes, as if the copy or the recording stopped there."""
    data = path.read_bytes()
    to.write_bytes(data[: int(len(data) * fraction)])
    return to


def probe(path: Path) -> dict:
    """Frame count, size, audio duration, rotation and colour tags of a file."""
    with av.open(str(path)) as container:
        info: dict = {"video_frames": 0, "audio_s": 0.0}
        if container.streams.video:
            stream = container.streams.video[0]
            pictures = list(container.decode(stream))
            info |= {
                "video_frames": len(pictures),
                "size": (pictures[0].width, pictures[0].height) if pictures else None,
                "rotation": pictures[0].rotation if pictures else 0,
                "colorspace": stream.codec_context.colorspace,
                "pts": [p.pts for p in pictures],
                "time_base": stream.time_base,
                "first": pictures[0].to_ndarray(format="rgb24") if pictures else None,
            }
    with av.open(str(path)) as container:
        if container.streams.audio:
            samples = sum(f.samples for f in container.decode(audio=0))
            context = container.streams.audio[0].codec_context
            info["audio_s"] = samples / context.sample_rate
            info["audio_rate"], info["audio_channels"] = context.sample_rate, context.channels
    return info


def make_face_clip(
    path: Path,
    *,
    frames: int = 12,
    size: tuple[int, int] = (320, 240),
    mirrored: bool = False,
    blank_from: int | None = None,
    zoom: float = 0.0,
    rotation: int = 0,
) -> Path:
    """A clip of the astronaut's real face (scikit-image, public domain) drifting right by 2 px a frame.

    `mirrored`: her mirror image beside her (two faces). `blank_from`: frames from this index
    on show a plain grey picture (no face). `zoom`: the picture grows by this fraction a frame
    (about its centre) instead of drifting. `rotation` (a multiple of 90): stored turned the
    other way and tagged with this display rotation, as a phone records portrait video, so
    players show her upright at `size` turned.
    """
    from skimage import data

    width, height = size
    picture = data.astronaut()[:320, 60:380]  # head and shoulders, 320×320
    if mirrored:
        picture = np.concatenate((picture, picture[:, ::-1]), axis=1)
    base = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
    scene_w = width + 2 * frames
    scene = base.reformat(width=scene_w, height=height).to_ndarray(format="rgb24")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30, options={"crf": "18", "preset": "ultrafast"})
        turns = rotation // 90 % 4
        stream.width, stream.height = (height, width) if turns % 2 else (width, height)
        stream.pix_fmt = "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            view = scene[:, 2 * frames - 2 * i : 2 * frames - 2 * i + width]
            if zoom:
                grown = base.reformat(width=round(scene_w * (1 + zoom * i)), height=round(height * (1 + zoom * i)))
                big = grown.to_ndarray(format="rgb24")
                top, left = (big.shape[0] - height) // 2, (big.shape[1] - width) // 2
                view = big[top : top + height, left : left + width]
            if blank_from is not None and i >= blank_from:
                view = np.full_like(view, 128)
            stored = np.ascontiguousarray(np.rot90(view, -turns))  # players turn it `turns` back
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, 30)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def grey_streams(
    out: av.container.OutputContainer, *, fps: int, rate: int, audio: bool = True
) -> tuple[Any, Any, av.VideoFrame]:
    """A small video stream (H.264, or VP9 in WebM), a mono AAC stream (unless `audio` is False)
    and the plain grey picture to encode into it."""
    codec = "libvpx-vp9" if out.format.name == "webm" else "libx264"
    options = {"deadline": "realtime", "cpu-used": "8"} if codec == "libvpx-vp9" else {"preset": "ultrafast"}
    video = out.add_stream(codec, rate=fps, options=options)
    video.width, video.height, video.pix_fmt = 160, 96, "yuv420p"
    sound = None
    if audio:
        sound = out.add_stream("aac", rate=rate)
        sound.layout = "mono"
    grey = av.VideoFrame.from_ndarray(np.full((96, 160, 3), 60, np.uint8), format="rgb24").reformat(format="yuv420p")
    return video, sound, grey


def clip_with_audio(path: Path, audio: np.ndarray, *, rate: int, fps: int = 30) -> Path:
    """Plain grey video frames with `audio` (mono float32 at `rate` Hz, AAC), one frame per 1/fps of it."""
    frames = int(len(audio) / rate * fps)
    per_frame = rate // fps
    with av.open(str(path), "w") as out:
        video, sound, picture = grey_streams(out, fps=fps, rate=rate)
        for i in range(frames):
            picture.pts, picture.time_base = i, Fraction(1, fps)
            out.mux(video.encode(picture))
            samples = np.ascontiguousarray(audio[None, i * per_frame : (i + 1) * per_frame], dtype=np.float32)
            chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = rate, i * per_frame
            out.mux(sound.encode(chunk))
        out.mux(video.encode(None))
        out.mux(sound.encode(None))
    return path


def clip_with_spans(
    path: Path,
    *,
    video_s: float,
    audio_s: float,
    audio_start_s: float = 0.0,
    video_start_s: float = 0.0,
    start_s: float = 0.0,
    fps: int = 30,
    rate: int = RATE,
    layout: str = "mono",
    codec: str = "aac",
    amplitude: float = 0.3,
) -> Path:
    """Grey pictures from `video_start_s` for `video_s` and a 440 Hz tone from `audio_start_s` for
    `audio_s`, muxed in time order: sound that outlasts the picture, or starts after or before
    it. `start_s` moves the whole clip on its clock (a recording that starts an hour in)."""
    per_chunk = 960 if codec == "libopus" else 1024
    origin = round((start_s + video_start_s) * fps)
    pictures = [((origin + i) / fps, "video", origin + i) for i in range(round(video_s * fps))]
    first = round((start_s + audio_start_s) * rate)
    chunks = [((first + n) / rate, "audio", first + n) for n in range(0, round(audio_s * rate), per_chunk)]
    with av.open(str(path), "w") as out:
        video, _, grey = grey_streams(out, fps=fps, rate=rate, audio=False)
        sound = out.add_stream(codec, rate=rate)
        sound.layout = layout
        channels = sound.codec_context.channels
        end = first + round(audio_s * rate)
        for _, kind, at in sorted(pictures + chunks):
            if kind == "video":
                grey.pts, grey.time_base = at, Fraction(1, fps)
                out.mux(video.encode(grey))
            else:
                t = (np.arange(at, min(at + per_chunk, end)) / rate).astype(np.float64)
                tone = (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
                tone = np.ascontiguousarray(np.repeat(tone, channels, axis=0))
                if channels > 6:  # PyAV cannot hold more than 8 planes' worth planar: interleaved instead
                    chunk = av.AudioFrame.from_ndarray(
                        np.ascontiguousarray(tone.T.reshape(1, -1)), format="flt", layout=layout
                    )
                else:
                    chunk = av.AudioFrame.from_ndarray(tone, format="fltp", layout=layout)
                chunk.sample_rate, chunk.pts = rate, at
                out.mux(sound.encode(chunk))
        out.mux(video.encode(None))
        out.mux(sound.encode(None))
    return path


def flash_and_click(
    path: Path, *, seconds: float = 2.0, at_s: float = 1.0, start_s: float = 0.0, fps: int = 30
) -> Path:
    """Grey pictures and silence with one white picture and one 50 ms click at `at_s`: where the
    two land in an output says whether picture and sound are still together. `start_s` moves the
    clip on its clock."""
    rate, per_frame = RATE, RATE // fps
    flash = round(at_s * fps)
    with av.open(str(path), "w") as out:
        video, sound, grey = grey_streams(out, fps=fps, rate=rate)
        white = av.VideoFrame.from_ndarray(np.full((96, 160, 3), 250, np.uint8), format="rgb24").reformat(
            format="yuv420p"
        )
        origin = round(start_s * fps)
        for i in range(round(seconds * fps)):
            picture = white if i == flash else grey
            picture.pts, picture.time_base = origin + i, Fraction(1, fps)
            out.mux(video.encode(picture))
            samples = np.zeros((1, per_frame), np.float32)
            if flash <= i < flash + 2:  # about 50 ms from the flash on (two pictures' worth)
                t = np.arange(per_frame) / rate
                samples[0] = 0.5 * np.sin(2 * np.pi * 1000 * t)
            chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = rate, (origin + i) * per_frame
            out.mux(sound.encode(chunk))
        out.mux(video.encode(None))
        out.mux(sound.encode(None))
    return path


def flashes_and_clicks(path: Path) -> tuple[list[float], list[float]]:
    """When each white picture is shown and each click starts, in seconds from the file's start."""
    with av.open(str(path)) as container:
        start = (container.start_time or 0) / av.time_base
        flashes = [
            float(p.pts * p.time_base) - start
            for p in container.decode(video=0)
            if p.to_ndarray(format="gray").mean() > 200
        ]
    with av.open(str(path)) as container:
        frames = list(container.decode(audio=0))
        rate = frames[0].sample_rate
        first_s = float(frames[0].pts * frames[0].time_base) - start if frames[0].pts is not None else 0.0
        samples = np.concatenate([f.to_ndarray()[0] for f in frames])
    loud = np.flatnonzero(np.abs(samples) > 0.2)
    onsets = [int(i) for n, i in enumerate(loud) if n == 0 or i - loud[n - 1] > 0.1 * rate]
    return flashes, [first_s + i / rate for i in onsets]


def decodable_pictures(path: Path) -> int:
    """Pictures a decoder on one thread gets from a file, skipping packets it refuses: what ffmpeg
    keeps from a damaged or cut file."""
    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        for packet in container.demux(stream):
            try:
                count += len(packet.decode())
            except (av.FFmpegError, ValueError):
                continue
    return count


SUBTITLES = """1
00:00:00,200 --> 00:00:00,900
Hello there.

2
00:00:01,000 --> 00:00:01,800
A second line.
"""


def many_streams(
    path: Path,
    *,
    seconds: float = 2.0,
    fps: int = 30,
    subtitles: bool = True,
    second_video: bool = False,
    start_s: float = 0.0,
) -> Path:
    """A clip with what a file may carry beside its picture and first sound: a second audio
    stream in another language and codec (AC-3, stereo), SubRip subtitles, and with
    `second_video` another camera (H.264 with B-frames, so its packets' order is not their
    pictures'). `start_s` moves the clip on its clock."""
    srt = path.parent / "lines.srt"
    srt.write_text(SUBTITLES)
    rate, per_frame = RATE, RATE // fps
    origin = round(start_s * fps)
    with av.open(str(srt)) as lines, av.open(str(path), "w") as out:
        video, first, grey = grey_streams(out, fps=fps, rate=rate)
        first.metadata["language"] = "eng"
        second = out.add_stream("ac3", rate=rate)
        second.layout, second.metadata["language"] = "stereo", "fre"
        angle = None
        if second_video:
            angle = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "bf": "2"})
            angle.width, angle.height, angle.pix_fmt = 160, 96, "yuv420p"
        if subtitles:
            lines_out = out.add_stream_from_template(lines.streams[0])
            lines_out.metadata["language"] = "eng"
            for packet in lines.demux(lines.streams[0]):
                if packet.size:
                    packet.stream = lines_out
                    out.mux(packet)
        for i in range(round(seconds * fps)):
            grey.pts, grey.time_base = origin + i, Fraction(1, fps)
            out.mux(video.encode(grey))
            if angle is not None:
                other = av.VideoFrame.from_ndarray(np.full((96, 160, 3), (i * 7) % 256, np.uint8), format="rgb24")
                other = other.reformat(format="yuv420p")
                other.pts, other.time_base = origin + i, Fraction(1, fps)
                out.mux(angle.encode(other))
            t = (np.arange(per_frame) + i * per_frame) / rate
            for stream, hz, layout in ((first, 440, "mono"), (second, 660, "stereo")):
                tone = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None]
                tone = np.repeat(tone, 2 if layout == "stereo" else 1, axis=0)
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone), format="fltp", layout=layout)
                chunk.sample_rate, chunk.pts = rate, (origin + i) * per_frame
                out.mux(stream.encode(chunk))
        for stream in (video, first, second, *([angle] if angle is not None else [])):
            out.mux(stream.encode(None))
    return path


def streams_of(path: Path) -> list[dict]:
    """Each stream's kind, codec, language and the seconds of sound it holds (audio) or its packets."""
    found = []
    with av.open(str(path)) as container:
        for stream in container.streams:
            found.append(
                {"type": stream.type, "codec": stream.codec_context.name, "language": stream.metadata.get("language")}
            )
    with av.open(str(path)) as container:
        for entry, stream in zip(found, container.streams, strict=True):
            if stream.type == "audio":
                entry["audio_s"] = sum(f.samples for f in container.decode(stream)) / stream.codec_context.sample_rate
                container.seek(0)
            elif stream.type == "video":
                entry["packets"] = sum(1 for p in container.demux(stream) if p.size)
                container.seek(0)
            elif stream.type == "subtitle":
                entry["packets"] = [
                    (float(p.pts * p.time_base), float(p.duration * p.time_base), bytes(p))
                    for p in container.demux(stream)
                    if p.size
                ]
                container.seek(0)
    return found
