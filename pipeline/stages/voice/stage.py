"""The voice stage: listens to the user (VAD, levels, turns) and gives the avatar a voice.

Each frame's audio is resampled to 16 kHz mono (FFmpeg's resampler, state kept across frames)
and fed to Silero VAD in 32 ms chunks; a speech gate with hysteresis and hangover turns the
chunk probabilities into turns (`pipeline.stages.voice.listener`). Levels come from the audio kernels
on the frame's own audio. Turn events carry their time on the stream's clock (the audio's pts),
so they line up with video frames; a turn's end is known only after the hangover, so
`user_stopped` arrives on a later frame than the one it names. The listening is an in-order side
job (`pipeline.side_work`): on live runs it runs beside the frames, and a frame carries what was
heard up to the frame before it and waits for none of it; a machine too slow to listen loses
the oldest sound past `MAX_BEHIND_S` (counted in the report) rather than the frames.

Hearing what was said: each finished turn's sound (with a little before and after it) goes to
Whisper (`pipeline.stages.voice.recognizer`), a managed model, as an in-order side job: on live runs
the text lands on a later frame, on file runs on the frame where the turn's end is known. Only
the sound of turns is kept or recognised; `asr: false` turns recognition off.

Speaking: lines queued with `say` (the `say` option, `--say` on the command line, other stages)
are cut into sentences, synthesized (Piper's natural voice by default, eSpeak NG as the light
option: `tts`) as an in-order side job, so the first sentence plays while the rest are made,
cached, and played out one frame's chunk at a time with the mouth shape of the phoneme sounding.
The frame's audio becomes the user's audio, lowered by `duck_db` while the avatar speaks, plus
the avatar's voice, through the mixing kernel's soft limiter, so it never clips. When the user
starts speaking, the avatar stops within that frame (barge-in) and, by default, drops the rest
of its queue. With `returns: avatar` the frame's sound becomes the avatar's voice alone (silence
between its lines): what a browser page plays, which must not play the user back to themselves.

Annotation, under the stage's name: `user_speaking`, `speech_prob` (the frame's highest chunk
probability; the last one when no chunk completed), `partial` (live runs: the text of the turn
the user is still speaking, as read at its last pause; null otherwise), `rms_dbfs`,
`peak_dbfs`, `clipped` (samples at full scale in this frame), `avatar_speaking`, `viseme` (mouth shape), `mouth` (0..1
openness from the voice's loudness), `text` (being spoken) and `events`:
`{"type": "user_started", "time_s"}`, `{"type": "user_stopped", "time_s", "duration_s"}`,
`{"type": "user_said", "text", "start_s", "end_s"}` (once per utterance; times on the stream's
clock, the speech's first and last moment), `{"type": "avatar_interrupted", "time_s", "text"}`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections import deque
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from kernels import ops
from pipeline.annotation import Annotation, Event
from pipeline.errors import one_line
from pipeline.frames import AudioChunk, Frame
from pipeline.io.audio_align import front_channels, layout_name
from pipeline.model_manager.accounting import ModelSpec
from pipeline.model_manager.manager import ModelManager
from pipeline.side_work import JobKind
from pipeline.stage import ComputeStage, StageContext, StageOptions
from pipeline.stages.audio_level import to_dbfs
from pipeline.stages.voice.capture import PAUSE_S, PREROLL_S, TAIL_S, Clip
from pipeline.stages.voice.listener import MAX_BEHIND_S, Heard, Listener
from pipeline.stages.voice.piper_synth import LazyPiper, onnx_cuda, shared_piper
from pipeline.stages.voice.recognizer import RecognizerUnavailable, Transcript, default_model_path, load_recognizer
from pipeline.stages.voice.speaker import MAX_QUEUED, Line, Speaker, sentences
from pipeline.stages.voice.synth import EspeakSynthesizer, SynthesisError, Synthesizer
from pipeline.stages.voice.vad import HANGOVER_S, THRESHOLD
from pipeline.stages.voice.vad import warm_up as warm_vad

log = logging.getLogger(__name__)

FULL_SCALE = 0.999  # a sample this close to ±1 counts as clipped
MAX_WAITING_UTTERANCES = 4  # utterances waiting to be recognised, past which the oldest is dropped
AHEAD_SHARE = 0.1  # of the wall time, for lines made ahead: nobody waits for them (Piper uses every core)
# Sentences waiting to be synthesized: more than the speaker ever queues (`MAX_QUEUED`), so none
# is dropped here (a dropped one would hold the queue up).
MAX_WAITING_SENTENCES = 2 * MAX_QUEUED
# Recognised once on live runs when the user first starts speaking (not at set-up, where every
# model of the graph loads at once): the load and the first call's cost are paid while they talk.
WARM_UP = Clip(np.zeros(16000, np.float32), 0.0, 0.0)
WARM_UP_LINE = "Hello."  # made once on live runs at set-up (into the cache), so the voice is loaded


class VoiceOptions(StageOptions):
    threshold: float = Field(THRESHOLD, gt=0.0, lt=1.0)  # speech probability that starts a turn
    hangover_s: float = Field(HANGOVER_S, ge=0.0, le=5.0)  # silence that ends one
    say: tuple[str, ...] = ()  # lines the avatar speaks from the start, in order
    tts: Literal["piper", "espeak"] = "piper"  # the avatar's voice: Piper's natural one, or eSpeak NG's light one
    # Piper: a voice model's .onnx path (None: en_US-joe-medium); eSpeak NG: a voice name (None: en-us).
    voice: str | None = None
    duck_db: float = Field(12.0, ge=0.0, le=60.0)  # how far the user's audio is lowered under the avatar's voice
    voice_gain_db: float = Field(0.0, ge=-40.0, le=20.0)  # the avatar's level
    barge_in: bool = True  # the user speaking stops the avatar
    barge_in_drops_queue: bool = True  # ... and drops what it had still to say
    # The frame's sound from here on: the user's with the avatar's voice mixed in (files, recordings),
    # or the avatar's voice alone (a browser page, which already hears the user).
    returns: Literal["mixed", "avatar"] = "mixed"
    asr: bool = True  # recognise what the user says (Whisper)
    asr_model: str | None = None  # a CTranslate2 Whisper model directory; None: the installed tiny.en
    asr_threads: int = Field(0, ge=0, le=64)  # CPU threads for recognition; 0: all the cores
    preroll_s: float = Field(PREROLL_S, ge=0.0, le=2.0)  # sound kept before a turn's start for recognition
    tail_s: float = Field(TAIL_S, ge=0.0, le=2.0)  # ... and after its end
    # Live runs: a pause this long in the user's speech starts reading the turn so far, so its
    # text is ready sooner if the turn ends there (at `hangover_s`). At least `tail_s`.
    pause_s: float = Field(PAUSE_S, gt=0.0, le=5.0)


class VoiceAnnotation(Annotation):
    rms_dbfs: float | None  # None on a frame with no audio
    peak_dbfs: float | None
    clipped: int  # samples at full scale in this frame
    user_speaking: bool
    speech_prob: float
    partial: str | None  # live runs: the turn so far, as read at its last pause
    avatar_speaking: bool
    viseme: str
    mouth: float
    text: str | None  # being spoken
    events: list[Event]  # user_started, user_stopped, user_said, avatar_interrupted


class Voice(ComputeStage):
    """Annotation: the user's speech (VAD), levels, clipping and turn events, per frame."""

    type_name = "voice"
    Annotation = VoiceAnnotation
    handles_dropped = True  # the sound of a dropped frame still plays
    offers = ("speech",)  # `say`: other stages (context) queue lines for the avatar
    Options = VoiceOptions

    @classmethod
    def warm_up(cls, device: torch.device) -> None:
        warm_vad("cpu")  # where SileroVAD runs, whatever the graph's device
        # The natural voice takes a second or two to load: once per process, before any session (one
        # that cannot have it says so when it sets up).
        with contextlib.suppress(SynthesisError):
            shared_piper(None, device.type == "cuda" and onnx_cuda())

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        options = self.options
        self.recognizer = self._recognizer_model(ctx) if options.asr else None
        self.utterances = 0  # recognised with text
        self.recognition_s = 0.0  # time recognition took, all together
        self.early = 0  # utterances whose text was ready when their turn ended (read at a pause)
        self.recognizing = None
        if self.recognizer is not None:
            # Started at once, not between frames: the user is waiting for the answer.
            self.recognizing = ctx.side_job(
                self._recognize,
                "recognize",
                kind=JobKind.IN_ORDER,
                max_lag=MAX_WAITING_UTTERANCES,
                between_frames=False,
            )
        # Live runs read the turn so far at each pause (`pause_s`): when the turn ends there, its
        # text is ready or on the way. Files gain nothing from it (they run in line). They also
        # warm the recognizer when the user first speaks.
        live = self.recognizing is not None and self.recognizing.beside
        self._warm_on_speech = live
        self.listener = Listener(
            threshold=options.threshold,
            hangover_s=options.hangover_s,
            capture=self.recognizer is not None,
            preroll_s=options.preroll_s,
            tail_s=options.tail_s,
            pause_s=options.pause_s if live else None,
        )
        # Clips read at pauses, by their turn: the text, or None while it is being read.
        self._read_early: dict[tuple[float, float], Transcript | None] = {}
        self._awaited: set[tuple[float, float]] = set()  # turns that ended at a pause still being read
        self._partial: str | None = None  # the open turn's text so far (live runs, from its pauses)
        self._open_start = -1.0  # where the latest turn began (stream seconds), for its partial text
        self._warming = False  # the warm-up is being read (a pause may wait behind it)
        self.recognition_failed = 0
        self.clipped_total = 0
        self.sentences_failed = 0
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
        self._ahead: deque[str] = deque()  # sentences to synthesize ahead, while synthesis is idle
        self._ahead_lock = threading.Lock()
        synthesizer = self._synthesizer(ctx)
        self.speaker: Speaker | None = None
        self.synthesizing = self.preparing = None
        if synthesizer is not None:
            # Sentences are made beside the frames on live runs (at once, not between frames: the
            # user is waiting for the first one), in line on file runs.
            self.synthesizing = ctx.side_job(
                self._make_sentence, "speak", kind=JobKind.IN_ORDER, max_lag=MAX_WAITING_SENTENCES, between_frames=False
            )
            voice = self.options.voice if self.options.tts == "espeak" else None
            self.speaker = Speaker(synthesizer, rate, voice=voice, prepare=self.synthesizing.submit)
            if self.synthesizing.beside and not self.options.say:  # live: load the voice now, beside
                self.synthesizing.submit(Line(WARM_UP_LINE))
            # Lines made ahead (`prepare_ahead`) are side work that must give way to the frames:
            # latest wins, started between frames and kept to its share of the wall time.
            self.preparing = ctx.side_job(self._make_sentence, "speak_ahead", kind=JobKind.LATEST, share=AHEAD_SHARE)
        for line in self.options.say:
            self.say(line)
        ctx.offer("speech", self)

    def _synthesizer(self, ctx: StageContext) -> Synthesizer | None:
        """The avatar's voice: Piper, else eSpeak NG, else none (said once, in one line)."""
        reasons = []
        if self.options.tts == "piper":
            try:
                return LazyPiper(self.options.voice, use_cuda=ctx.device.type == "cuda" and onnx_cuda())
            except SynthesisError as exc:
                reasons.append(str(exc))
        try:
            synthesizer = EspeakSynthesizer()
        except SynthesisError as exc:
            reasons.append(str(exc))
            log.warning("%s: the avatar stays silent (%s)", self.name, "; ".join(reasons))
            return None
        if reasons:
            log.warning("%s: the avatar speaks with eSpeak NG (%s)", self.name, reasons[0])
        return synthesizer

    def _make_sentence(self, line: Line) -> None:
        """One sentence synthesized (a side job's work); a sentence that fails is skipped, and said once."""
        assert self.speaker is not None
        try:
            self.speaker.prepare(line)
        except Exception as exc:
            line.dropped = True
            self.sentences_failed += 1
            if self.sentences_failed == 1:
                log.warning("%s: could not say %r (%s)", self.name, line.text[:40], one_line(exc))

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

    def _recognize(self, clip: Clip, early: bool) -> tuple[Clip, bool, Transcript | None]:
        """One utterance (or the turn so far, at a pause: `early`) through the recognizer, beside
        the frames on live runs, the model pinned. None when it failed (counted, said once): a
        frame never fails for it."""
        assert self.recognizer is not None and self.ctx is not None
        try:
            with self.models.use(self.recognizer) as model:
                if clip is WARM_UP and model.warm:  # another session of this process warmed it
                    return clip, early, Transcript("", 0.0)
                return clip, early, model.transcribe(clip.samples)
        except Exception as exc:
            self.recognition_failed += 1
            if self.recognition_failed == 1:
                log.warning("%s: could not recognise what was said (%s)", self.name, one_line(exc))
            return clip, early, None

    def counters(self) -> dict[str, Any]:
        """What was heard and said over the run."""
        speaker = self.speaker
        return {
            "utterances": self.utterances,  # recognised with words
            "read_at_pause": self.early,  # of them, with the text read at the pause they ended at
            "recognition_s": round(self.recognition_s, 3),  # all recognition work, pauses' readings included
            "recognition_failed": self.recognition_failed,
            "sound_dropped": self.listening.stats.dropped,  # frames' sound the VAD fell too far behind to hear
            "silence_added_s": round(self.listener.silence_added_s, 3),  # sound missing, heard as silence
            "sentences_synthesized": speaker.synthesized if speaker is not None else 0,
            "sentences_interrupted": speaker.interrupted if speaker is not None else 0,
            "sentences_failed": self.sentences_failed,
            "sentences_refused": speaker.refused if speaker is not None else 0,
            "clipped_samples": self.clipped_total,
        }

    def prepare_ahead(self, lines: list[str]) -> None:
        """Synthesize `lines` into the cache on live runs, one sentence at a time as side work that
        gives way to the frames (and never starts while a line being said is made; one said while
        an early sentence is being made waits for it, tens of milliseconds): lines the avatar is
        likely to say (the rules' answers) then start as soon as they are said. Any thread."""
        if self.speaker is not None and self.synthesizing is not None and self.synthesizing.beside:
            with self._ahead_lock:
                self._ahead.extend(sentence for line in lines for sentence in sentences(line))

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
        events += self._said(heard)
        if heard.started and self.options.barge_in and self.speaker is not None and self.speaker.speaking:
            cut = self.speaker.current_text
            self.speaker.stop(drop_queue=self.options.barge_in_drops_queue)
            events.append({"type": "avatar_interrupted", "time_s": round(heard.started[0], 3), "text": cut})
        if heard.started or not heard.speaking:
            self._partial = None  # a new turn, or the turn is over (its text came as user_said)
        record |= {
            "user_speaking": heard.speaking,
            "speech_prob": round(heard.probability, 4),
            "partial": self._partial,
        }
        record |= self._speak(frame)
        record["events"] = events
        return record

    def _said(self, heard: Heard) -> list[dict[str, Any]]:
        """Hands new utterances (and turns so far, at pauses) to the recognizer; `user_said` events
        for the utterances whose text is ready.

        A turn that ends where it paused has the clip that pause had: its text was read then, and
        is used (at once if ready, else when it comes) instead of reading it again. A pause read
        while something else is being read is skipped: reading it would only delay the turn's end.
        A reading that fails is counted and lost; a turn that was waiting on it is read again."""
        if self.recognizing is None:
            return []
        if heard.started and self._warm_on_speech:
            self._warm_on_speech = False
            self._warming = True
            self.recognizing.submit(WARM_UP, False)
        ready: list[tuple[Clip, Transcript, bool]] = []  # (clip, its text, read at a pause)
        if heard.started:
            self._open_start = heard.started[-1]
        for clip in heard.pauses[-1:]:  # the latest pause, when nothing else (but the warm-up) is read
            if not self.recognizing.busy or (self._warming and not self.recognizing.waiting):
                self._read_early[_key(clip)] = None
                self.recognizing.submit(clip, True)
        for clip in heard.utterances:
            key = _key(clip)
            if self._read_early.get(key) is not None:
                ready.append((clip, self._read_early.pop(key), True))
            elif key in self._read_early:
                self._awaited.add(key)
            else:
                self.recognizing.submit(clip, False)
        for clip, early, transcript in self.recognizing.take():
            self._warming = self._warming and clip is not WARM_UP
            key = _key(clip)
            if transcript is None:  # the reading failed (counted): a turn waiting on it is read again
                self._read_early.pop(key, None)
                if key in self._awaited:
                    self._awaited.discard(key)
                    self.recognizing.submit(clip, False)
                continue
            self.recognition_s += transcript.seconds
            if not early:
                ready.append((clip, transcript, False))
            elif key in self._awaited:
                self._awaited.discard(key)
                self._read_early.pop(key, None)
                ready.append((clip, transcript, True))
            else:  # the turn went on, or has not ended yet: kept until it does (the last few)
                self._read_early[key] = transcript
                if transcript.text and abs(clip.start_s - self._open_start) < 1e-3:
                    self._partial = transcript.text  # what the user has said so far in this turn
                while len(self._read_early) > MAX_WAITING_UTTERANCES:
                    del self._read_early[next(iter(self._read_early))]
        events = []
        for clip, transcript, early in ready:
            if clip is WARM_UP or not transcript.text:  # no words in it
                continue
            self.utterances += 1
            self.early += early
            events.append(
                {"type": "user_said", "text": transcript.text, "start_s": round(clip.start_s, 3),
                 "end_s": round(clip.end_s, 3)}
            )  # fmt: skip
        return events

    def _speak(self, frame: Frame) -> dict[str, Any]:
        """The avatar's part of this frame: its chunk of voice mixed into the frame's audio, and its mouth."""
        if self.synthesizing is not None:
            self.synthesizing.take()  # the sentences made since the last frame (each failure was said once)
        if self.preparing is not None:
            self.preparing.take()
            if self._ahead and not self.preparing.busy and not self.synthesizing.busy:
                with self._ahead_lock:
                    ahead = self._ahead.popleft() if self._ahead else None
                if ahead is not None:
                    self.preparing.submit(Line(ahead))
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


def _key(clip: Clip) -> tuple[float, float]:
    """A clip's turn, by where its speech starts and ends (a turn ending at a pause has that pause's clip)."""
    return round(clip.start_s, 4), round(clip.end_s, 4)
