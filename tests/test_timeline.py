"""The picture timeline: jumps are mended from the jump on; a repeated timestamp is not a jump."""

from __future__ import annotations

from fractions import Fraction

import av

from pipeline.io.timeline import Timeline

TB = Fraction(1, 30)


def placed(pts: list[int], *, jumps_forward: bool = False) -> tuple[list[int], int]:
    timeline = Timeline("clip", TB, Fraction(30), jumps_forward=jumps_forward)
    out = []
    for value in pts:
        picture = av.VideoFrame(16, 16, "yuv420p")
        picture.pts = value
        timeline.place(picture)
        out.append(picture.pts)
    return out, timeline.jumps


def test_a_jump_back_continues_one_frame_after_the_last_picture():
    first = list(range(30))  # a second of pictures, then the clock starts again
    assert placed([*first, 0, 1, 2]) == ([*first, 30, 31, 32], 1)


def test_repeated_and_jittery_timestamps_are_left_as_they_are():
    # A repeated stamp, a step back of a frame: not jumps (the sink moves such a picture on by a
    # tick); shifting the rest would put every later picture out of step with the sound.
    assert placed([0, 1, 2, 2, 2, 3, 4, 3, 5]) == ([0, 1, 2, 2, 2, 3, 4, 3, 5], 0)


def test_a_long_jump_forward_is_mended_only_where_the_format_allows_jumps():
    hour = 3600 * 30
    assert placed([0, 1, hour, hour + 1], jumps_forward=True) == ([0, 1, 2, 3], 1)
    assert placed([0, 1, hour, hour + 1]) == ([0, 1, hour, hour + 1], 0)  # an mp4's gap is the file's


def test_after_a_jump_a_copied_stream_continues_where_its_last_item_ends():
    """Subtitles: a 4 s line at 100 s, then the clock restarts with 1 s lines. They follow on at
    104 s (where the long line ends), not over it."""
    from pipeline.io.timeline import Continuity

    lines = Continuity(Fraction(1, 1000), jumps_forward=False)
    stamps = [lines.place(ts, duration) for ts, duration in ((100_000, 4_000), (0, 1_000), (3_000, 1_000))]
    assert stamps == [100_000, 104_000, 107_000] and lines.jumps == 1
