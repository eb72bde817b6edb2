"""Listening: Silero VAD finds real speech where it was placed, and nothing in silence or noise."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("silero_vad", reason="voice activity detection needs silero-vad")
pytest.importorskip("espeakng_loader", reason="the test speech is made with eSpeak NG")

from voice_kit import RATE, placed, spoken

from pipeline.stages.voice.vad import CHUNK, VAD_RATE, SileroVAD, SpeechGate, model_path

TOLERANCE_S = 0.1


def turns(audio: np.ndarray, *, pieces: int = 7) -> list:
    """Stream `audio` through the VAD in uneven pieces (as frames would deliver it) and gate it."""
    vad, gate = SileroVAD(), SpeechGate()
    found = []
    for piece in np.array_split(audio, pieces):
        _, ended = gate.push(vad.push(piece))
        found += ended
    return found + gate.finish()


@pytest.mark.parametrize("snr_db", [None, 10.0])
def test_speech_is_found_where_it_was_placed(snr_db):
    speech, sound_start, sound_end = spoken()
    at = 1.3
    found = turns(placed(speech, at, 6.0, noise_snr_db=snr_db))
    assert len(found) == 1, found
    assert abs(found[0].start_s - (at + sound_start)) <= TOLERANCE_S
    assert abs(found[0].end_s - (at + sound_end)) <= TOLERANCE_S


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_silence_and_pure_noise_are_not_speech(kind):
    rng = np.random.default_rng(1)
    audio = (
        np.zeros(4 * RATE, np.float32)
        if kind == "silence"
        else (rng.standard_normal(4 * RATE) * 0.05).astype(np.float32)
    )
    assert turns(audio) == []


def test_short_pauses_do_not_split_a_turn_and_long_ones_do():
    speech, _, _ = spoken("Hello there.")
    gap = lambda s: np.zeros(int(s * RATE), np.float32)  # noqa: E731
    close = np.concatenate((gap(0.5), speech, gap(0.15), speech, gap(1.0)))
    apart = np.concatenate((gap(0.5), speech, gap(1.2), speech, gap(1.0)))
    assert len(turns(close)) == 1
    assert len(turns(apart)) == 2


def test_only_whole_chunks_are_scored_and_the_rest_waits():
    vad = SileroVAD()
    assert len(vad.push(np.zeros(CHUNK - 1, np.float32))) == 0
    assert len(vad.push(np.zeros(1, np.float32))) == 1
    assert len(vad.push(np.zeros(CHUNK + 5, np.float32))) == 1  # 5 samples wait for the next chunk
    assert len(vad.push(np.zeros(CHUNK - 5, np.float32))) == 1
    assert vad.chunks == 3


def test_each_stream_gets_its_own_state_and_the_warm_up_leaves_no_trace():
    """Copies of the warmed model score a stream as a model just loaded from the file does, and
    two streams pushed in turn score as each would alone."""
    speech, _, _ = spoken()
    audio = placed(speech, 0.4, 4.0)  # 125 whole chunks
    noise = np.random.default_rng(2).normal(0.0, 0.05, len(audio)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(model_path())).eval()
    with torch.no_grad():
        chunks = np.split(audio, len(audio) // CHUNK)
        expected = np.array([float(loaded(torch.from_numpy(chunk), VAD_RATE)) for chunk in chunks])
    one, two = SileroVAD(), SileroVAD()
    scored_one, scored_two = [], []
    for a, b in zip(np.array_split(audio, 9), np.array_split(noise, 9), strict=True):
        scored_one.append(one.push(a))
        scored_two.append(two.push(b))
    alone = SileroVAD().push(noise)
    np.testing.assert_allclose(np.concatenate(scored_one), expected, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(scored_two), alone, atol=1e-5)
    assert expected.max() > 0.9  # the speech was heard: the comparison covers the model's whole range
