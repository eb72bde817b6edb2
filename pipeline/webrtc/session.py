"""One browser connection: its peer connection, its own pipeline run, and its data channel.

The browser's tracks become the run's source; the processed video, the mixed audio and the
analytics go back on the same connection. Models are shared with every other session through
the server's model manager; everything else (tracks, ring buffer, stages' state, context) is
the session's own and is freed when the peer disconnects, fails or goes silent.

The returned sound is the avatar's voice alone (`with_avatar_voice_returned`): the page plays it,
and the user's own voice played back would be an echo. The data channel (label `analytics`,
opened by the browser) carries one compact JSON message per
delivered frame, at most `max_messages_per_s`. Every stage's `events` go in one list, each
marked with its stage's name (`stage`); an event a stage only relays from another (`origin`) is
sent once, as its origin's, and the events of frames in between are carried by the next
message, so none is lost. It takes commands as JSON:
`{"type": "say", "text": …}`, `{"type": "layout", "layout": "pip"|"replace"|"side"}`,
`{"type": "targets", "latency_ms": …, "fps": …}` (either or both); each is answered with
`{"type": "ack"|"error", …}`. Events wait for the channel to open (a page may never open it),
at most `MAX_PENDING_EVENTS` of them, the newest.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from aiortc import RTCPeerConnection

from pipeline.annotation import NotJson, is_json, strict_json
from pipeline.config import GraphConfig
from pipeline.device_profiles import DeviceProfile
from pipeline.errors import one_line
from pipeline.executor import Pipeline
from pipeline.frames import Frame
from pipeline.graph import build_graph, with_avatar_voice_returned
from pipeline.metrics import RecentRate
from pipeline.model_manager.manager import ModelManager
from pipeline.webrtc.tracks import SILENCE_S, PeerSink, TrackSource, first_picture

log = logging.getLogger(__name__)

MAX_MESSAGES_PER_S = 15.0
MAX_PENDING_EVENTS = 256  # events kept for a channel not open yet; older ones are dropped (and counted)
FPS_WINDOW_S = 1.0  # the fps the page shows: frames delivered over this much recent time
_ids = itertools.count(1)


class Session:
    """A peer connection and the pipeline run that serves it."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        config: GraphConfig,
        *,
        device: torch.device,
        models: ModelManager,
        profile: DeviceProfile | None = None,
        max_messages_per_s: float = MAX_MESSAGES_PER_S,
        silence_s: float = SILENCE_S,
        on_closed: Callable[[Session], None] | None = None,
    ):
        self.id = next(_ids)
        self.pc = pc
        self.config = config
        self.device = device
        self.models = models
        self.profile = profile
        self.on_closed = on_closed
        self.silence_s = silence_s
        self.sink = PeerSink(on_frame=self._frame_out)
        self.pipeline: Pipeline | None = None
        self.report: dict[str, Any] | None = None
        self.channel: Any = None
        self.started_s = time.monotonic()
        self.closed = asyncio.Event()
        self.error: str | None = None
        self._video: Any = None
        self._audio: Any = None
        self._run: asyncio.Task | None = None
        self._min_gap_s = 1.0 / max_messages_per_s
        self._last_sent_s = 0.0
        self._pending_events: list[dict[str, Any]] = []
        self.events_dropped = 0  # events dropped while no channel took them
        self.rejected = NotJson(log, f"session {self.id}", "sent as missing")  # stage → messages
        self.out_rate = RecentRate(FPS_WINDOW_S)
        self.messages_sent = 0
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_channel)
        pc.on("connectionstatechange", self._on_state)

    def attach_outgoing(self) -> list[str]:
        """Send the processed tracks on the offer's own video and audio sections (call after the
        remote description is set): an answer may not add sections the offer lacks. The kinds sent."""
        kinds = {t.kind for t in self.pc.getTransceivers()}
        sent = []
        for track in (self.sink.video, self.sink.audio):
            if track.kind in kinds:
                self.pc.addTrack(track)  # aiortc reuses the offered transceiver of that kind
                sent.append(track.kind)
        return sent

    # ----------------------------------------------------------------- peer events

    def _on_track(self, track: Any) -> None:
        if track.kind == "video" and self._video is None:
            self._video = track
        elif track.kind == "audio" and self._audio is None:
            self._audio = track

    def _on_channel(self, channel: Any) -> None:
        if channel.label != "analytics":
            return
        self.channel = channel
        channel.on("message", self._on_message)

    async def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            await self.close(f"connection {self.pc.connectionState}")

    # ----------------------------------------------------------------- the run

    def start(self) -> None:
        """Begin serving once the answer is sent: the run starts with the first picture."""
        self._run = asyncio.create_task(self._serve(), name=f"session-{self.id}")

    async def _serve(self) -> None:
        try:
            if self._video is None:
                raise RuntimeError("the offer has no video track")
            first = await first_picture(self._video, self.silence_s)
            source = TrackSource(self._video, self._audio, first, silence_s=self.silence_s)
            self.pipeline = Pipeline(
                build_graph(with_avatar_voice_returned(self.config)),
                source,
                self.sink,
                device=self.device,
                models=self.models,
                device_profile=self.profile,
            )
            self.report = await self.pipeline.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = one_line(exc)
            log.warning("session %d: %s", self.id, self.error)
        finally:
            asyncio.get_running_loop().create_task(self.close("the run ended"))

    async def close(self, why: str = "closed") -> None:
        """End the run (its output is finalized), close the connection, free everything. Idempotent."""
        if self.closed.is_set():
            return
        self.closed.set()
        log.info("session %d: closing (%s)", self.id, why)
        run, self._run = self._run, None
        if self.pipeline is not None and run is not None and not run.done():
            self.pipeline.request_stop()
            self.pipeline.request_stop()  # a live peer: nothing to drain for
        if run is not None and run is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(run, 10)
        await self.pc.close()
        if self.on_closed is not None:
            self.on_closed(self)

    # ----------------------------------------------------------------- analytics out

    def _frame_out(self, frame: Frame, latency_ms: float) -> None:
        self._pending_events.extend(stage_events(frame.annotations))
        over = len(self._pending_events) - MAX_PENDING_EVENTS
        if over > 0:
            del self._pending_events[:over]
            self.events_dropped += over
        now = time.monotonic()
        if frame.why_dropped is None:  # dropped frames pass by too (for their sound); they are not shown
            self.out_rate.tick(now)
        if now - self._last_sent_s < self._min_gap_s:
            return
        message = frame.to_json()
        for key, annotation in message.items():  # every stage's events go in one list, gathered since the last message
            if isinstance(annotation, dict) and "events" in annotation:
                message[key] = {k: v for k, v in annotation.items() if k != "events"}
        message["events"] = self._pending_events
        message["latency_ms"] = round(latency_ms, 2)
        message["fps"] = round(self.out_rate.per_s(now), 2)
        if self._send(message):
            self._pending_events = []
            self._last_sent_s = now

    def _send(self, message: dict[str, Any]) -> bool:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return False
        channel.send(strict_json(message, self.rejected))
        self.messages_sent += 1
        return True

    # ----------------------------------------------------------------- commands in

    def _on_message(self, text: Any) -> None:
        """Every message gets an `ack` or an `error` reply, whatever it holds, and the session goes on:
        nothing a page sends may escape into the connection's own loop and end it."""
        try:
            command = json.loads(text)
            if not isinstance(command, dict):
                raise ValueError("a command is a JSON object")
            done = self.command(command)
            self._send({"type": "ack", "command": str(command.get("type"))[:40], **done})
        except (ValueError, TypeError, KeyError) as exc:
            self._reply_error(one_line(exc)[:300])
        except Exception as exc:  # JSON nested too deep (RecursionError), and whatever else a message does
            log.info("session %d: a message could not be handled (%s)", self.id, type(exc).__name__)
            self._reply_error(f"the message could not be handled ({type(exc).__name__})")

    def _reply_error(self, error: str) -> None:
        try:
            self._send({"type": "error", "error": error})
        except Exception as exc:  # a channel closing under us: the session's own end says why
            log.debug("session %d: no error reply (%s)", self.id, exc)

    def command(self, command: dict[str, Any]) -> dict[str, Any]:
        """Carry out one command from the page; a ValueError says what was wrong with it."""
        kind = command.get("type")
        pipeline = self.pipeline
        if pipeline is None:
            raise ValueError("the session has not started yet")
        if kind == "say":
            text = str(command.get("text", "")).strip()
            if not text:
                raise ValueError("say: no text")
            voices = pipeline.stages_of("voice")
            if not voices:
                raise ValueError("say: this graph has no voice stage")
            voices[0].say(text[:500])
            return {"text": text[:500]}
        if kind == "layout":
            avatars = pipeline.stages_of("avatar")
            if not avatars:
                raise ValueError("layout: this graph has no avatar stage")
            for avatar in avatars:
                avatar.set_layout(str(command.get("layout")))
            return {"layout": command.get("layout")}
        if kind == "targets":
            targets = parse_targets(command)
            if not self.set_targets(targets):
                raise ValueError("targets: the scheduler is off for this session")
            return targets
        raise ValueError(f"unknown command type {kind!r} (say, layout, targets)")

    def set_targets(self, targets: dict[str, float]) -> bool:
        """Apply `parse_targets`' result to this session's scheduler; False when it has none (yet)."""
        scheduler = self.pipeline.scheduler if self.pipeline is not None else None
        if scheduler is None:
            return False
        if "latency_ms" in targets:
            scheduler.set_budget(targets["latency_ms"])
        if "fps" in targets:
            scheduler.set_target_fps(targets["fps"])
        return True

    # ----------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        metrics = self.pipeline.metrics if self.pipeline is not None else None
        scheduler = self.pipeline.scheduler if self.pipeline is not None else None
        return {
            "id": self.id,
            "state": self.pc.connectionState,
            "age_s": round(time.monotonic() - self.started_s, 1),
            "frames_in": metrics.frames_in if metrics else 0,
            "frames_out": metrics.frames_out if metrics else 0,
            "dropped": dict(metrics.drops) if metrics else {},
            # Arrival of a picture to its handing to the outgoing track (the encoder's part not in it).
            "e2e_p50_ms": round(metrics.end_to_end.percentile_ns(0.50) / 1e6, 2) if metrics else None,
            "e2e_p95_ms": round(metrics.end_to_end.percentile_ns(0.95) / 1e6, 2) if metrics else None,
            "fps": round(self.out_rate.per_s(time.monotonic()), 2),
            "stages_ms": {
                name: {
                    "p50": round(s.latency.percentile_ns(0.50) / 1e6, 2),
                    "p95": round(s.latency.percentile_ns(0.95) / 1e6, 2),
                }
                for name, s in metrics.stages.items()
            }
            if metrics
            else {},
            "targets": {"latency_ms": scheduler.budget_ms, "fps": scheduler.target_fps} if scheduler else None,
            "rung": scheduler.controller.rung_name if scheduler else None,
            "messages_sent": self.messages_sent,
            "events_dropped": self.events_dropped,
            "not_json": dict(self.rejected),  # stage → messages that carried its annotation as missing
            "video_replaced": self.sink.video.replaced,  # pictures the sender never took: no backlog kept
            "audio_cut_samples": self.sink.audio.cut,
            "error": self.error,
        }


# What a request may set, in the API's own terms: below these a live session would all but stop
# (one frame in seconds), above them nothing is held any more.
TARGET_RANGES = {"latency_ms": (5.0, 10_000.0), "fps": (1.0, 1000.0)}


def parse_targets(body: dict[str, Any]) -> dict[str, float]:
    """The targets in a request or command: `latency_ms` and/or `fps`, each a number within
    `TARGET_RANGES`. A ValueError says what is wrong."""
    targets = {}
    for key, (low, high) in TARGET_RANGES.items():
        if key not in body:
            continue
        value = body[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"targets: {key} must be a number, got {_shown(value)}")
        if not low <= value <= high:  # NaN fails too; an int of any size compares without overflow
            raise ValueError(f"targets: {key} must be from {low:g} to {high:g}, got {_shown(value)}")
        targets[key] = float(value)
    if not targets:
        raise ValueError('targets: expected {"latency_ms": …} and/or {"fps": …}')
    return targets


def _shown(value: Any) -> str:
    """A value as an error names it: its repr, cut short (a request may hold a 400-digit number)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def stage_events(annotations: dict[str, Any]) -> list[dict[str, Any]]:
    """Every stage's events on one frame, each marked with its stage's name, relays left out."""
    found = []
    for stage, annotation in annotations.items():
        events = annotation.get("events") if isinstance(annotation, dict) else None
        if isinstance(events, list):  # a stage of one's own may leave anything: only event records go
            found.extend(
                {**e, "stage": stage} for e in events if isinstance(e, dict) and "origin" not in e and is_json(e)
            )
    return found
