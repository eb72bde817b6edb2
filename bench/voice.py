#!/usr/bin/env python3
"""The voice stage's per-chunk costs and the synthesizer's speed, against real time measured in the same run.

Per 32 ms chunk (512 samples at 16 kHz, the VAD's unit; levels and mixing on the same 32 ms of
48 kHz stereo output): Silero VAD, the level meters and the two-stream mix with its limiter,
each as a share of the 32 ms the chunk lasts. Synthesis: eSpeak NG on a few sentences, as a
real-time factor (seconds of compute per second of speech; below 1 is faster than real time).

    python bench/voice.py [--chunks 300]

Last line: one JSON object {"vad_ms", "levels_ms", "mix_ms", "chunk_ms", "synthesis_rtf", ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from kernels import ops
from pipeline.stages.voice.vad import CHUNK, CHUNK_S, SileroVAD

SENTENCES = (
    "Hello! I am the avatar, and I am happy to see you.",
    "The quick brown fox jumps over the lazy dog.",
    "Please tell me more about what you are working on today.",
)


def per_call_ms(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - began) * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=300, help="timed calls per measurement. Default: 300")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the stage runs: one worker thread
    rng = np.random.default_rng(0)
    vad = SileroVAD()
    speech_like = (rng.standard_normal(CHUNK) * 0.1).astype(np.float32)
    output = torch.from_numpy((rng.standard_normal((2, 1536)) * 0.3).astype(np.float32))  # 32 ms of 48 kHz stereo
    voice = torch.from_numpy((rng.standard_normal((2, 1536)) * 0.3).astype(np.float32))
    chunk_ms = CHUNK_S * 1e3
    vad_ms = per_call_ms(lambda: vad.push(speech_like), args.chunks)
    levels_ms = per_call_ms(lambda: ops.levels(output), args.chunks)
    mix_ms = per_call_ms(lambda: ops.mix(output, voice, gain_first=0.25), args.chunks)
    rows = [("VAD (Silero)", vad_ms), ("levels (RMS, peak)", levels_ms), ("mix + limiter", mix_ms)]
    rtf = None
    try:
        from pipeline.stages.voice.synth import EspeakSynthesizer

        synthesizer = EspeakSynthesizer()
        compute, speech = 0.0, 0.0
        for sentence in SENTENCES:
            began = time.perf_counter()
            utterance = synthesizer.synthesize(sentence)
            compute += time.perf_counter() - began
            speech += utterance.duration_s
        rtf = compute / speech
    except Exception as exc:  # eSpeak NG is an optional extra
        print(f"synthesis not measured: {exc}")
    print(f"per {chunk_ms:.0f} ms chunk, CPU, one thread")
    print(f"{'':<22}{'ms':>8}{'of real time':>14}")
    for name, ms in rows:
        print(f"{name:<22}{ms:>8.3f}{ms / chunk_ms:>13.1%}")
    total = vad_ms + levels_ms + mix_ms
    print(f"{'all three':<22}{total:>8.3f}{total / chunk_ms:>13.1%}")
    if rtf is not None:
        print(f"synthesis (eSpeak NG): real-time factor {rtf:.4f} ({1 / rtf:.0f}x faster than real time)")
    print(
        json.dumps(
            {
                "chunk_ms": round(chunk_ms, 1),
                "vad_ms": round(vad_ms, 4),
                "levels_ms": round(levels_ms, 4),
                "mix_ms": round(mix_ms, 4),
                "share_of_real_time": round(total / chunk_ms, 4),
                "synthesis_rtf": round(rtf, 5) if rtf is not None else None,
            }
        )
    )


if __name__ == "__main__":
    main()
