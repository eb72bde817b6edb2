"""Where sessions live: a model manager, the sessions using it, and how many it may hold.

The HTTP server has one `SessionHost` in its own process; with `--serve --ray`, each Ray
worker actor has one instead, and the server only places offers on them. Either way an offer
becomes a session here: a peer connection, its own pipeline run, the shared models.

The host runs the models' housekeeping round (idle unloading, relief past the critical
threshold, CPU fallbacks moved back, preloading, cache release) for as long as it lives, not
only while a session runs: a model loaded through `POST /api/resource/load`, or left by the
last session, is still unloaded when idle.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import torch
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from pipeline.config import GraphConfig, with_targets
from pipeline.device_profiles import DeviceProfile, detect_profile
from pipeline.errors import one_line
from pipeline.model_manager.manager import ModelManager
from pipeline.registry import stage_type
from pipeline.webrtc import receive
from pipeline.webrtc.ice import rtc_ice_servers
from pipeline.webrtc.prometheus import Counters, Retired
from pipeline.webrtc.session import Session
from pipeline.webrtc.tracks import SILENCE_S

log = logging.getLogger(__name__)


class HostFull(Exception):
    """Every session this host may hold is taken."""


class BadOffer(ValueError):
    """An SDP offer aiortc cannot take."""


class SessionHost:
    """Sessions on one process and device, sharing one model manager."""

    def __init__(
        self,
        config: GraphConfig,
        *,
        device: torch.device,
        capacity: int,
        profile: DeviceProfile | None = None,
        prompt_receive: bool = True,
        silence_s: float = SILENCE_S,
        models: ModelManager | None = None,
        housekeeping_s: float = 1.0,
    ):
        self.config = config
        self.device = device
        self.capacity = capacity
        self.profile = profile or detect_profile(device)
        self.models = models if models is not None else ModelManager.for_device(device, self.profile)
        self.housekeeping_s = housekeeping_s  # seconds between the models' housekeeping rounds
        self._housekeeping: asyncio.Task[None] | None = None
        self.prompt_receive = prompt_receive  # False: aiortc's receive path as it is (for comparison)
        self.silence_s = silence_s  # a peer that sends no video this long is gone
        self.sessions: set[Session] = set()
        self.sessions_total = 0
        self.retired = Retired()  # what ended sessions measured (counters only grow)

    def start(self) -> None:
        """Start the models' housekeeping round for the host's lifetime (once; needs a running loop).

        It is the manager's oldest watcher, so it does the rounds and the sessions' runs,
        which start their own, only stand by."""
        if self._housekeeping is None or self._housekeeping.done():
            self._housekeeping = asyncio.get_running_loop().create_task(
                self.models.watch(self.housekeeping_s), name="models-housekeeping"
            )

    def warm_up(self) -> None:
        """Each stage type in the graph loads and warms what its sessions share (blocking: run it
        off the event loop, before the first offer). A type that fails here is left to fail, and
        be reported, in its sessions' own setup."""
        for kind in dict.fromkeys(spec.type for spec in self.config.stages):
            try:
                stage_type(kind).warm_up(self.device)
            except Exception as exc:  # the session's setup reports it, with the stage's name
                log.warning("warming up %s failed: %s", kind, one_line(exc))

    @property
    def free(self) -> int:
        return self.capacity - len(self.sessions)

    async def answer(self, sdp: str) -> dict[str, str]:
        """Open a session for an SDP offer; its answer as {"sdp", "type"}."""
        self.start()  # a Ray worker's host has no start of its own: its first offer starts the round
        if self.free <= 0:
            raise HostFull(f"all {self.capacity} session(s) are taken; try again later")
        # No ICE servers configured: host candidates only (both ends must see each other).
        pc = RTCPeerConnection(RTCConfiguration(iceServers=rtc_ice_servers(self.config.webrtc.ice_servers)))
        session = Session(
            pc,
            self.config,
            device=self.device,
            models=self.models,
            profile=self.profile,
            silence_s=self.silence_s,
            on_closed=self._closed,
        )
        self.sessions.add(session)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if self.prompt_receive:
                receive.install(pc)  # each received frame goes to the decoder on its last packet
            session.attach_outgoing()
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises ValueError and others on SDP it cannot take
            await session.close("bad offer")
            raise BadOffer(f"the offer could not be used: {one_line(exc)}") from None
        session.start()
        self.sessions_total += 1  # sessions started: an offer refused above is none
        log.info("session %d: started (%d running)", session.id, len(self.sessions))
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    def _closed(self, session: Session) -> None:
        if session in self.sessions and session.pipeline is not None:
            self.retired.add(session.pipeline.metrics)
        self.sessions.discard(session)

    def frames_out(self) -> int:
        return self.retired.totals.frames_out + sum(
            s.pipeline.metrics.frames_out for s in self.sessions if s.pipeline is not None
        )

    def counters(self) -> Counters:
        """What this host's sessions measured, ended and running, for the Prometheus collector."""
        running = [s for s in self.sessions if s.pipeline is not None]
        return Counters.of(
            self.retired,
            [s.pipeline.metrics for s in running],
            [s.pipeline.scheduler.controller.rung_name for s in running if s.pipeline.scheduler is not None],
            sessions=len(self.sessions),
            sessions_total=self.sessions_total,
            models=self.models.status(),
        )

    def set_targets(self, targets: dict[str, float]) -> int:
        """New latency and/or fps targets (`parse_targets`' result) for every running session and
        every session started from now on; how many running sessions took them."""
        self.config = with_targets(self.config, **targets)
        return sum(session.set_targets(targets) for session in self.sessions)

    def status(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "free": self.free,
            "sessions": [session.status() for session in self.sessions],
            "sessions_total": self.sessions_total,
            "frames_out": self.frames_out(),
        }

    async def close(self) -> None:
        for session in list(self.sessions):
            await session.close("host stopping")
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            await asyncio.gather(self._housekeeping, return_exceptions=True)
            self._housekeeping = None
