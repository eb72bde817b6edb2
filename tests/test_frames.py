"""A frame: its record for the analytics, its drop as a marker that keeps sound and order, and
its ring slot given back once, whoever gives it."""

from __future__ import annotations

from fractions import Fraction

import torch

from pipeline.frames import AudioChunk, Frame, joined
from pipeline.ringbuffer import FullPolicy, RingBuffer


def test_the_record_carries_index_time_annotations_and_why_it_was_dropped():
    frame = Frame(7, 3003, Fraction(1, 30000), 0)
    frame.annotations["voice"] = {"user_speaking": False}
    assert frame.to_json() == {"frame": 7, "time_s": 0.1001, "voice": {"user_speaking": False}}
    frame.drop("late")
    assert frame.to_json()["dropped"] == "late" and not frame.has_image


def test_a_drop_before_any_stage_began_gives_the_slot_back_at_once_and_keeps_the_audio():
    ring = RingBuffer(2, (4, 4))
    sound = AudioChunk(torch.zeros(1, 160), 16000, 0)
    untouched = Frame(0, 0, Fraction(1, 30), 0, ring.try_acquire(), audio=sound)
    begun = Frame(1, 1, Fraction(1, 30), 0, ring.try_acquire())
    begun.lease.mark_started()
    untouched.drop("late")
    begun.drop("late")
    assert ring.in_use == 1 and untouched.audio is sound  # the begun one is held until it leaves
    begun.release()
    begun.release()  # twice is fine
    assert ring.in_use == 0


def test_a_reclaimed_slot_marks_its_frame_dropped_with_the_rings_reason():
    ring = RingBuffer(1, (4, 4), policy=FullPolicy.LATEST)
    old = Frame(0, 0, Fraction(1, 30), 0, ring.try_acquire())
    new = Frame(1, 1, Fraction(1, 30), 0, ring.try_acquire())  # the newest frame wins the slot
    assert new.has_image and not old.has_image and old.dropped
    old.release()
    assert old.why_dropped == old.drop_reason is not None and new.lease is not None


def test_joined_sound_follows_on_in_order():
    first = AudioChunk(torch.ones(2, 3), 48000, 100)
    then = AudioChunk(torch.zeros(2, 2), 48000, 103)
    both = joined(first, then)
    assert both.pts == 100 and both.samples.tolist() == [[1, 1, 1, 0, 0]] * 2
    assert joined(None, then) is then and joined(first, None) is first
