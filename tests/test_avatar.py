"""The avatar: drawn the same for the same state, mouth moving only with its voice, expression easing to its target."""

from __future__ import annotations

import asyncio
import itertools
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from models.avatar import FaceSprites, FaceState, render_face, settled
from pipeline.frames import Frame
from pipeline.io.base import StreamInfo
from pipeline.stage import StageContext
from pipeline.stages.avatar import Avatar, AvatarOptions, approach

FIXTURE = Path(__file__).parent / "fixtures" / "avatar_reference.npz"
STATES = {
    "neutral": FaceState(),
    "happy": FaceState(smile=1.0, brows=0.3),
    "mouth_open": FaceState(mouth_open=0.9, mouth_width=0.6),
}
CPU = torch.device("cpu")


@pytest.mark.parametrize("name", sorted(STATES))
def test_known_states_draw_as_their_reference_images(name):
    """Regenerate the fixture only on purpose: np.savez_compressed of render_face(STATES[name], 48) per name."""
    want = np.load(FIXTURE)[name].astype(int)
    got = render_face(STATES[name], 48).numpy().astype(int)
    assert got.shape == (48, 48, 4)
    assert np.abs(got - want).mean() <= 1.0


def test_states_look_different_where_they_should():
    neutral, happy, talking = (
        render_face(STATES[n], 64).numpy().astype(int) for n in ("neutral", "happy", "mouth_open")
    )
    mouth, eyes = (slice(38, 56), slice(10, 54)), (slice(18, 30), slice(10, 54))
    assert np.abs(happy[mouth] - neutral[mouth]).mean() > 5  # the smile changes the mouth
    assert np.abs(talking[mouth] - neutral[mouth]).mean() > 10
    assert np.abs(talking[eyes] - neutral[eyes]).mean() < 1  # opening the mouth leaves the eyes alone
    assert neutral[0, 0, 3] == 0 and neutral[32, 32, 3] == 255  # transparent around, opaque face


def premultiplied(face: torch.Tensor) -> torch.Tensor:
    """What a drawing puts on a frame: colour times coverage (and the coverage)."""
    rgba = face.float()
    return torch.cat((rgba[..., :3] * rgba[..., 3:] / 255, rgba[..., 3:]), dim=-1)


@pytest.mark.parametrize("size", [48, 168, 432])
def test_a_settled_state_draws_within_a_fraction_of_a_pixel_of_the_exact_one(size):
    """Rounding moves no edge by more than an eighth of a pixel: at most that share of an edge
    pixel's contrast changes, and on average almost nothing."""
    rng = np.random.default_rng(size)
    for _ in range(10):
        state = FaceState(*rng.uniform(-1, 1, 2), rng.uniform(0, 1), *rng.uniform(0, 1, 2), *rng.uniform(-1, 1, 3))
        exact, rounded = (premultiplied(render_face(s, size)) for s in (state, settled(state, size)))
        assert settled(state, size) != state
        difference = (exact - rounded).abs()
        assert difference.max() <= 0.15 * 255 and difference.mean() <= 0.5, state


def test_sprites_draw_a_settled_state_once_and_keep_the_latest():
    sprites = FaceSprites(entries=2)
    still, blink, talk = FaceState(smile=0.4), FaceState(smile=0.4, eye_open=0.0), FaceState(mouth_open=0.6)
    first = sprites.face(still, 96)
    assert torch.equal(first, render_face(settled(still, 96), 96))
    assert sprites.face(FaceState(smile=0.4001), 96) is first  # too small a change to see
    sprites.face(blink, 96)
    assert sprites.face(still, 96) is first and (sprites.drawn, sprites.reused) == (2, 2)
    sprites.face(talk, 96)  # the third face: the least recently used (the blink) goes
    sprites.face(blink, 96)
    assert sprites.drawn == 4
    assert sprites.face(still, 128) is not first  # another size is another drawing


def make_stage(**options) -> Avatar:
    stage = Avatar("avatar", options=AvatarOptions(**options))
    stage.setup(StageContext.standalone(stage, CPU, stream=StreamInfo(640, 360, Fraction(30), Fraction(1, 30))))
    return stage


def frame_at(index: int, *, probs=None, speaking=False, mouth=0.0, viseme="aa") -> Frame:
    frame = Frame(index, index, Fraction(1, 30), 0)
    faces = [{"box": [200, 80, 320, 220], "probs": probs, "label": None}] if probs else []
    frame.annotations["emotion"] = {"faces": faces}
    frame.annotations["voice"] = {"avatar_speaking": speaking, "mouth": mouth, "viseme": viseme}
    return frame


def first_face_frame() -> Frame:
    """Frame 0 of the face scene, in its ring slot, with no faces seen and no voice."""
    from pipeline.io.synthetic import SyntheticSource
    from pipeline.ringbuffer import RingBuffer

    source = SyntheticSource(width=640, height=360, frames=1, scene="face")

    async def one():
        async for frame in source.frames(RingBuffer(2, source.info.frame_shape)):
            return frame

    frame = asyncio.run(one())
    frame.annotations |= {"emotion": {"faces": []}, "voice": {"avatar_speaking": False}}
    return frame


def test_the_mouth_moves_when_and_only_when_the_avatar_speaks():
    stage = make_stage()
    script = [False] * 20 + [True] * 30 + [False] * 30
    mouths = []
    for index, speaking in enumerate(script):
        wobble = 0.3 + 0.3 * np.sin(index)  # the voice's loudness moves from frame to frame
        mouths.append(stage.step(frame_at(index, speaking=speaking, mouth=wobble))[0].mouth_open)
    assert max(mouths[:20]) == 0.0
    assert min(mouths[25:50]) > 0.05 and np.std(mouths[25:50]) > 0.05  # open, and moving
    assert max(mouths[60:]) < 0.01  # closed again soon after the voice stops
    assert (
        make_stage().step(frame_at(0, speaking=False, mouth=0.9))[0].mouth_open == 0.0
    )  # loudness alone opens nothing


def test_the_expression_eases_to_its_target_with_the_configured_time_constant():
    stage = make_stage(mode="mirror", expression_tau_s=0.3)
    neutral = {"neutral": 1.0}
    happy = {"happy": 1.0}
    smiles = [stage.step(frame_at(i, probs=neutral if i < 30 else happy))[0].smile for i in range(60)]
    before, goal = smiles[29], 1.0
    assert abs(before) < 1e-6
    assert smiles[30] - before < 0.15 * (goal - before)  # no jump when the label flips
    after_tau = smiles[29 + 9]  # 9 frames = 0.3 s
    assert after_tau == pytest.approx(approach(before, goal, 0.3, 0.3), abs=0.02)  # 63% of the way
    assert smiles[-1] > 0.95


def test_blinks_come_on_a_seeded_schedule():
    def blinks(seed):
        stage = make_stage(seed=seed)
        return [stage.step(frame_at(i))[2] for i in range(600)]  # 20 s

    first, again, other = blinks(1), blinks(1), blinks(2)
    assert first == again and first != other
    starts = sum(1 for a, b in itertools.pairwise(first) if b and not a)
    assert 3 <= starts <= 10  # every 2-6 s


def test_the_default_graph_draws_the_avatar_into_the_sample(tmp_path):
    from pipeline.cli import EXIT_OK, main

    analytics = tmp_path / "sample.jsonl"
    assert main(["--source", "sample", "--frames", "15", "--say", "Hello.", "--analytics", str(analytics)]) == EXIT_OK
    records = [json.loads(line) for line in analytics.read_text().splitlines()]
    assert all("box" in r["avatar"] for r in records)
    assert any(r["avatar"]["mouth"] > 0.05 for r in records)
    assert records[0]["avatar"]["box"][0] > 320  # top-right picture-in-picture


def test_drawn_into_the_frame_only_inside_its_box():
    stage = make_stage()
    frame = first_face_frame()
    before = frame.image.clone()
    x0, y0, x1, y1 = stage.compute(frame)["box"]
    changed = (frame.image[:360] != before[:360]).nonzero()
    assert len(changed)
    assert changed[:, 0].min() >= y0 and changed[:, 0].max() < y1
    assert changed[:, 1].min() >= x0 and changed[:, 1].max() < x1


def test_side_by_side_puts_the_middle_of_the_picture_left_and_the_avatar_right():
    from kernels.colour import i420_planes
    from pipeline.stages.avatar import BACKDROP_YUV

    stage = make_stage(layout="side")
    frame = first_face_frame()
    before = frame.image.clone()
    x0, y0, x1, y1 = stage.compute(frame)["box"]
    assert x0 >= 320 and x1 <= 640  # in the right half
    y_after, y_before = i420_planes(frame.image)[0], i420_planes(before)[0]
    assert torch.equal(y_after[:, :320], y_before[:, 160:480])  # the middle half, moved left, untouched
    right = y_after[:, 320:]
    assert int(right[0, 0]) == BACKDROP_YUV[0] and int(right[-1, -1]) == BACKDROP_YUV[0]  # backdrop around it
    assert (right[y0:y1, x0 - 320 : x1 - 320] != BACKDROP_YUV[0]).float().mean() > 0.3  # the face is drawn


def test_drawing_each_part_in_its_box_gives_the_pixels_of_drawing_it_everywhere(monkeypatch):
    """Each part is evaluated only where its coverage can be above zero; the boxes must never cut
    off a pixel it touches. Compared with every part drawn on the whole canvas, over random faces."""
    import models.avatar as avatar

    rng = np.random.default_rng(7)
    cases = []
    for size in (17, 48, 96, 168, 251):
        for _ in range(12):
            state = FaceState(
                smile=float(rng.uniform(-1, 1)),
                brows=float(rng.uniform(-1, 1)),
                eye_open=float(rng.choice([0.0, 0.1, 0.5, 1.0])),
                mouth_open=float(rng.uniform(0, 1)),
                mouth_width=float(rng.uniform(0, 1)),
                gaze_x=float(rng.uniform(-1, 1)),
                gaze_y=float(rng.uniform(-1, 1)),
                turn=float(rng.uniform(-1, 1)),
            )
            cases.append((state, size, avatar.render_face(state, size)))
    monkeypatch.setattr(avatar, "_span", lambda lo, hi, size: slice(0, size))  # every part everywhere
    for state, size, windowed in cases:
        assert torch.equal(windowed, avatar.render_face(state, size)), (state, size)


def test_the_head_drawn_once_is_what_each_drawing_starts_from_and_stays_as_it_was():
    """The head no state moves is drawn once per size, theme and device; drawings paint on a copy."""
    import models.avatar as avatar

    avatar._bare_head.cache_clear()
    shut = render_face(FaceState(eye_open=0.0), 64, theme="mint")
    _, _, head = avatar._bare_head(64, "mint", "cpu")  # NumPy on a CPU
    before = head.copy()
    talking = render_face(FaceState(mouth_open=1.0, smile=1.0), 64, theme="mint")
    assert avatar._bare_head.cache_info().misses == 1  # both drawings used one head
    assert np.array_equal(head, before)  # neither painted on it
    assert not torch.equal(shut, talking)
    avatar._bare_head.cache_clear()
    assert torch.equal(render_face(FaceState(mouth_open=1.0, smile=1.0), 64, theme="mint"), talking)


def test_a_face_at_rest_is_drawn_once_and_a_talking_one_on_every_frame():
    from pipeline.ringbuffer import RingBuffer

    stage = make_stage()
    ring = RingBuffer(1, (540, 640))  # 640×360 I420
    redrawn = []
    for index in range(90):
        speaking = 30 <= index < 60
        loudness = 0.1 + 0.5 * (index * 0.618 % 1)  # the voice moves from frame to frame, never repeating
        frame = frame_at(index, probs={"happy": 1.0}, speaking=speaking, mouth=loudness)
        frame.lease = ring.try_acquire()
        redrawn.append(stage.compute(frame)["redrawn"])
        frame.release()
    blinks = 2  # a blink, at most one in these 3 s, draws the shut eyes once; the open ones are kept
    assert redrawn[0] and sum(redrawn[:30]) <= 1 + blinks
    # A mouth that moves with the voice is drawn anew on many frames (a shape it had a moment ago
    # comes back from the sprites).
    assert sum(redrawn[31:60]) >= 10
    assert sum(redrawn[75:]) <= blinks  # closed again and still


@pytest.mark.parametrize(("redraw_hz", "least", "most"), [(30.0, 30, 41), (0.0, 120, 120)])
def test_a_fast_source_shows_each_drawing_on_several_frames(redraw_hz, least, most):
    """At 120 fps a talking mouth moves on nearly every frame; the face is asked of the sprites
    (drawn, or kept from before) at most about `redraw_hz` times a second (0: on every frame),
    while its parameters ease on every frame."""
    from pipeline.ringbuffer import RingBuffer

    stage = make_stage(redraw_hz=redraw_hz)
    faces = []
    face = stage.sprites.face
    stage.sprites.face = lambda *args, **kwargs: faces.append(face(*args, **kwargs)) or faces[-1]
    ring = RingBuffer(1, (540, 640))
    mouths = set()
    for index in range(120):  # one second at 120 fps, talking throughout
        frame = frame_at(index, probs={"happy": 1.0}, speaking=True, mouth=0.1 + 0.5 * (index * 0.618 % 1))
        frame.time_base = Fraction(1, 120)
        frame.lease = ring.try_acquire()
        mouths.add(stage.compute(frame)["mouth"])
        frame.release()
    assert least <= len(faces) <= most  # 30 Hz: every 3rd or 4th frame (a quarter period of slack)
    assert len(mouths) >= 60  # the state moved on most frames, drawn or not


def test_the_torch_drawing_a_gpu_uses_gives_the_pixels_of_the_numpy_one_a_cpu_uses(monkeypatch):
    """One drawing code, two array libraries: run torch's on the CPU here and compare."""
    import models.avatar as avatar

    rng = np.random.default_rng(3)
    states = [FaceState(*(float(x) for x in rng.uniform(-1, 1, 8))) for _ in range(30)] + [
        FaceState(eye_open=0.0),
        FaceState(mouth_open=1.0, smile=1.0),
    ]
    with_numpy = [render_face(state, 96, theme="cool") for state in states]
    for cache in (avatar._paint_colour, avatar._bare_head):
        cache.cache_clear()
    monkeypatch.setattr(avatar, "_draws_with_numpy", lambda device: False)
    try:
        assert isinstance(avatar._bare_head(96, "cool", "cpu")[2], torch.Tensor)
        with_torch = [render_face(state, 96, theme="cool") for state in states]
    finally:
        for cache in (avatar._paint_colour, avatar._bare_head):
            cache.cache_clear()
    for state, a, b in zip(states, with_numpy, with_torch, strict=True):
        difference = (a.int() - b.int()).abs()
        assert difference.max() <= 1 and (difference > 0).float().mean() < 1e-3, state
