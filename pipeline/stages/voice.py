"""The voice stage: listens to the user (VAD, levels, turns) and gives the avatar a voice.

Each frame's audio is resampled to 16 kHz mono (FFmpeg's resampler, state kept across frames)
and fed to Silero VAD in 32 ms chunks; a speech gate with hysteresis and hangover turns the
chunk probabilities into turns (`pipeline.voice.listener`). Levels come from the audio kernels
on the frame's own audio. Turn events carry their time on the stream's clock (the audio's pts),
so they line up with video frames; a turn's end is known only after the hangover, so
`user_stopped` arrives on a later frame than the one it names. The listening is an in-order side
job (`pipeline.side_work`): on live runs it runs beside the frames, and a frame carries what was
heard up to the frame before it and waits for none of it; a machine too slow to listen loses
the oldest sound past `MAX_BEHIND_S` (counted in the report) rather than the frames.

Hearing what was said: each finished turn's sound (with a little before and after it) goes to
Whisper (`pipeline.voice.recognizer`), a managed model, as an in-order side job: on live runs
the text lands on a later frame, on file runs on the frame where the turn's end is known. Only
the sound of turns is kept or recognised; `asr: false` turns recognition off.

Speaking: lines queued with `say` (the `say` option, `--say` on the command line, other stages)
are synthesized (eSpeak NG by default), cached, and played out one frame's chunk at a time.
The frame's audio becomes the user's audio, lowered by `duck_db` while the avatar speaks, plus
the avatar's voice, through the mixing kernel's soft limiter, so it never clips. When the user
starts speaking, the avatar stops within that frame (barge-in) and, by default, drops the rest
of its queue. With `returns: avatar` the frame's sound becomes the avatar's voice alone (silence
between its lines): what a browser page plays, which must not play the user back to themselves.

Annotation, under the stage's name: `user_speaking`, `speech_prob` (the frame's highest chunk
probability; the last one when no chunk completed), `rms_dbfs`, `peak_dbfs`, `clipped` (samples
at full scale in this frame), `avatar_speaking`, `viseme` (mouth shape), `mouth` (0..1
openness from the voice's loudness), `text` (being spoken) and `events`:
`{"type": "user_started", "time_s"}`, `{"type": "user_stopped", "time_s", "duration_s"}`,
`{"type": "user_said", "text", "start_s", "end_s"}` (once per utterance; times on the stream's
clock, the speech's first and last moment), `{"type": "avatar_interrupted", "time_s", "text"}`.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from kernels import ops
from pipeline.errors import one_line
from pipeline.frames import AudioChunk, Frame
from pipeline.io.audio_align import front_channels, layout_name
from pipeline.memory import ModelManager, ModelSpec
from pipeline.registry import register_stage
from pipeline.side_work import JobKind
from pipeline.stage import ComputeStage, StageContext, StageOptions
from pipeline.stages.audio_level import to_dbfs
from pipeline.voice.capture import PREROLL_S, TAIL_S, Clip
from pipeline.voice.listener import MAX_BEHIND_S, Listener
from pipeline.voice.recognizer import RecognizerUnavailable, Transcript, default_model_path, load_recognizer
from pipeline.voice.speaker import Speaker
from pipeline.voice.synth import DEFAULT_VOICE, EspeakSynthesizer, SynthesisError
from pipeline.voice.vad import HANGOVER_S, THRESHOLD
from pipeline.voice.vad import warm_up as warm_vad

log = logging.getLogger(__name__)

FULL_SCALE = 0.999  # a sample this close to ±1 counts as clipped
MAX_WAITING_UTTERANCES = 4  # utterances waiting to be recognised, past which the oldest is dropped
# Recognised once on live runs at set-up, so the user's first words pay no load or warm-up.
WARM_UP = Clip(np.zeros(16000, np.float32), 0.0, 0.0)


class VoiceOptions(StageOptions):
    threshold: float = Field(THRESHOLD, gt=0.0, lt=1.0)  # speech probability that starts a turn
    hangover_s: float = Field(HANGOVER_S, ge=0.0, le=5.0)  # silence that ends one
    say: tuple[str, ...] = ()  # lines the avatar speaks from the start, in order
    voice: str = DEFAULT_VOICE  # the synthesizer's voice name
    duck_db: float = Field(12.0, ge=0.0, le=60.0)  # how far the user's audio is lowered under the avatar's voice
    voice_gain_db: float = Field(0.0, ge=-40.0, le=20.0)  # the avatar's level
    barge_in: bool = True  # the user speaking stops the avatar
    barge_in_drops_queue: bool = True  # ... and drops what it had still to say
    # The frame's sound from here on: the user's with the avatar's voice mixed in (files, recordings),
    # or the avatar's voice alone (a browser page, which already hears the user).
    returns: Literal["mixed", "avatar"] = "mixed"
    asr: bool = True  # recognise what the user says (Whisper)
    asr_model: str | None = None  # a CTranslate2 Whisper model directory; None: the installed tiny.en
    asr_threads: int = Field(0, ge=0, le=64)  # CPU threads for recognition; 0: half the cores
    preroll_s: float = Field(PREROLL_S, ge=0.0, le=2.0)  # sound kept before a turn's start for recognition
    tail_s: float = Field(TAIL_S, ge=0.0, le=2.0)  # ... and after its end


@register_stage
class Voice(ComputeStage):
    """Annotation: the user's speech (VAD), levels, clipping and turn events, per frame."""

    type_name = "voice"
    handles_dropped = True  # the sound of a dropped frame still plays
    offers = ("speech",)  # `say`: other stages (context) queue lines for the avatar
    Options = VoiceOptions

    @classmethod
    def warm_up(cls, device: torch.device) -> None:
        warm_vad("cpu")  # where SileroVAD runs, whatever the graph's device

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        options = self.options
        self.recognizer = self._recognizer_model(ctx) if options.asr else None
        self.listener = Listener(
            threshold=options.threshold,
            hangover_s=options.hangover_s,
            capture=self.recognizer is not None,
            preroll_s=options.preroll_s,
            tail_s=options.tail_s,
        )
        self.utterances = 0  # recognised with text
        self.recognition_s = 0.0  # time recognition took, all together
        self.recognizing = None
        if self.recognizer is not None:
            self.recognizing = ctx.side_job(
                self._recognize, "recognize", kind=JobKind.IN_ORDER, max_lag=MAX_WAITING_UTTERANCES
            )
            if self.recognizing.beside:  # live: load and warm it now, not on the user's first words
                self.recognizing.submit(WARM_UP)
        self.clipped_total = 0
        rate = ctx.stream.audio_rate if ctx.stream is not None and ctx.stream.audio_rate else 48000
        fps = float(ctx.stream.fps) if ctx.stream is not None and ctx.stream.fps else 30.0
        # One request a frame's sound: at most `MAX_BEHIND_S` of it waits to be heard.
        self.listening = ctx.side_job(
            self.listener.listen, "listen", kind=JobKind.IN_ORDER, max_lag=max(1, round(MAX_BEHIND_S * fps))
        )
        self._frame_samples = max(1, round(rate / fps))  # the avatar's voice per frame when the stream has no audio
        # The avatar speaks from the front (left, right, centre), not from the LFE or the surrounds.
        stream = ctx.stream
        channels = stream.audio_channels if stream is not None else 0
        layout = (stream.audio_layout or layout_name(channels)) if stream is not None and channels else "mono"
        self._voice_channels = front_channels(layout)
        try:
            self.speaker: Speaker | None = Speaker(EspeakSynthesizer(), rate, voice=self.options.voice)
        except SynthesisError as exc:
            log.warning("%s: the avatar stays silent (%s)", self.name, exc)
            self.speaker = None
        for line in self.options.say:
            self.say(line)
        ctx.offer("speech", self)

    def _recognizer_model(self, ctx: StageContext) -> str | None:
        """The recognizer's name in the model manager (registered there), or None without one."""
        options = self.options
        try:
            path = options.asr_model or str(default_model_path())
            import faster_whisper  # noqa: F401  (here: a clear line now rather than at the first words)
        except (RecognizerUnavailable, ImportError) as exc:
            log.warning("%s: what the user says is not recognised (%s)", self.name, one_line(exc))
            return None
        self.models = ctx.models if ctx.models is not None else ModelManager.for_device(ctx.device)
        name = f"whisper({path})"
        loader = functools.partial(load_recognizer, path, options.asr_threads)
        self.models.ensure(ModelSpec(name, loader, "medium"))
        return name

    def _recognize(self, clip: Clip) -> tuple[Clip, Transcript]:
        """One utterance through the recognizer (beside the frames on live runs), the model pinned."""
        assert self.recognizer is not None and self.ctx is not None
        with self.models.use(self.recognizer) as model:
            return clip, model.transcribe(clip.samples)

    def say(self, text: str) -> None:
        """Queue a line for the avatar (any thread)."""
        if self.speaker is not None:
            self.speaker.say(text)

    def compute(self, frame: Frame) -> dict[str, Any]:
        chunk = frame.audio
        events: list[dict[str, Any]] = []
        record: dict[str, Any] = {"rms_dbfs": None, "peak_dbfs": None, "clipped": 0}
        if chunk is not None and chunk.samples.shape[-1]:
            rms, peak = ops.levels(chunk.samples)
            record["rms_dbfs"] = to_dbfs(float(rms.max()))
            record["peak_dbfs"] = to_dbfs(float(peak.max()))
            clipped = int((chunk.samples.abs() >= FULL_SCALE).sum())
            record["clipped"] = clipped
            self.clipped_total += clipped
            if self.listening.beside:  # the thread's own copy: the frame's sound is mixed into below
                chunk = AudioChunk(chunk.samples.detach().to("cpu", copy=True), chunk.sample_rate, chunk.pts)
            self.listening.submit(chunk)
        heard = self.listener.fold(self.listening.take())
        events += [{"type": "user_started", "time_s": round(t, 3)} for t in heard.started]
        events += [
            {"type": "user_stopped", "time_s": round(turn.end_s, 3), "duration_s": round(turn.duration_s, 3)}
            for turn in heard.ended
        ]
        events += self._said(heard.utterances)
        if heard.started and self.options.barge_in and self.speaker is not None and self.speaker.speaking:
            cut = self.speaker.current_text
            self.speaker.stop(drop_queue=self.options.barge_in_drops_queue)
            events.append({"type": "avatar_interrupted", "time_s": round(heard.started[0], 3), "text": cut})
        record |= {"user_speaking": heard.speaking, "speech_prob": round(heard.probability, 4)}
        record |= self._speak(frame)
        record["events"] = events
        return record

    def _said(self, utterances: list[Clip]) -> list[dict[str, Any]]:
        """Hands new utterances to the recognizer; `user_said` events for those it has finished."""
        if self.recognizing is None:
            return []
        for clip in utterances:
            self.recognizing.submit(clip)
        events = []
        for clip, transcript in self.recognizing.take():
            self.recognition_s += transcript.seconds
            if clip is WARM_UP or not transcript.text:  # no words in it
                continue
            self.utterances += 1
            events.append(
                {"type": "user_said", "text": transcript.text, "start_s": round(clip.start_s, 3),
                 "end_s": round(clip.end_s, 3)}
            )  # fmt: skip
        return events

    def _speak(self, frame: Frame) -> dict[str, Any]:
        """The avatar's part of this frame: its chunk of voice mixed into the frame's audio, and its mouth."""
        if self.speaker is None:
            return {"avatar_speaking": False, "viseme": "sil", "mouth": 0.0, "text": None}
        chunk = frame.audio
        count = chunk.samples.shape[-1] if chunk is not None else self._frame_samples
        spoken = self.speaker.next_chunk(count)
        alone = self.options.returns == "avatar"
        if chunk is not None and count and spoken.text is not None:
            user = chunk.samples.to(torch.float32)
            voice = torch.from_numpy(spoken.samples).to(user.device).expand_as(user)
            if len(self._voice_channels) < user.shape[0]:
                front = torch.zeros_like(user)
                front[self._voice_channels] = voice[self._voice_channels]
                voice = front
            mixed = ops.mix(
                user,
                voice,
                gain_first=0.0 if alone else 10 ** (-self.options.duck_db / 20),
                gain_second=10 ** (self.options.voice_gain_db / 20),
            )
            frame.audio = AudioChunk(mixed, chunk.sample_rate, chunk.pts)
        elif chunk is not None and alone:
            frame.audio = AudioChunk(torch.zeros_like(chunk.samples, dtype=torch.float32), chunk.sample_rate, chunk.pts)
        return {
            "avatar_speaking": spoken.text is not None,
            "viseme": spoken.viseme,
            "mouth": spoken.mouth,
            "text": spoken.text,
        }
