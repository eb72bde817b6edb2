"""Live sessions across Ray worker actors: `--serve --ray ADDRESS`.

The HTTP server (page, `/offer`, status, metrics) stays in front; each Ray worker actor owns a
`SessionHost` (its models and its sessions) on its own process, GPU and machine. An offer goes
to the worker with the most free room, which answers it; from then on the browser's media and
data channel run straight to that worker, not through the front. When every worker is full the
front answers 503. A worker that dies takes only its own sessions with it: the front drops it
from placement at the next offer or status, the other workers go on streaming, and the page of
a session that ended shows that the server stopped answering.

Ray is imported only here, and this module only when `--ray` is given with `--serve`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import torch

from pipeline.config import GraphConfig
from pipeline.webrtc.hosting import BadOffer, HostFull, SessionHost
from pipeline.webrtc.tracks import SILENCE_S

log = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 5.0  # a worker that does not answer a status request this fast is taken as gone


class SessionWorker:
    """One worker's sessions (a Ray actor: its methods run on the actor's own event loop)."""

    def __init__(
        self,
        config: GraphConfig,
        device: str,
        capacity: int,
        ice_addresses: list[str] | None = None,
        silence_s: float = SILENCE_S,
    ):
        if ice_addresses is not None:
            from pipeline.webrtc.ice import limit_ice_to

            limit_ice_to(ice_addresses)
        self.host = SessionHost(config, device=torch.device(device), capacity=capacity, silence_s=silence_s)

    async def answer(self, sdp: str) -> dict[str, Any]:
        """{"answer": …}, or {"full": reason} / {"bad": reason}: exceptions would arrive wrapped."""
        try:
            return {"answer": await self.host.answer(sdp)}
        except HostFull as exc:
            return {"full": str(exc)}
        except BadOffer as exc:
            return {"bad": str(exc)}

    async def status(self) -> dict[str, Any]:
        return self.host.status()

    async def close(self) -> None:
        await self.host.close()


class RayPlacer:
    """Places each offer on the Ray worker with the most free room; see the module docstring."""

    def __init__(
        self,
        config: GraphConfig,
        *,
        workers: int,
        capacity: int,
        device: str = "cpu",
        address: str = "auto",
        ice_addresses: list[str] | None = None,
        silence_s: float = SILENCE_S,
    ):
        import ray

        from pipeline.cluster.batch import connect

        if workers < 1 or capacity < 1:
            raise ValueError("--ray with --serve needs at least one worker with room for one session")
        connect(address)
        actor = ray.remote(SessionWorker).options(
            num_cpus=1, num_gpus=1 if device.startswith("cuda") else 0, max_restarts=0, max_concurrency=1000
        )
        self.workers = [actor.remote(config, device, capacity, ice_addresses, silence_s) for _ in range(workers)]
        self.capacity = capacity
        self._last: dict[int, dict[str, Any]] = {}
        self.lost = 0
        log.info("ray: %d session worker(s), %d session(s) each", workers, capacity)

    async def _statuses(self) -> list[tuple[Any, dict[str, Any]]]:
        import ray

        async def ask(worker: Any) -> dict[str, Any] | None:
            try:
                return await asyncio.wait_for(worker.status.remote(), STATUS_TIMEOUT_S)
            except (ray.exceptions.RayActorError, TimeoutError):
                return None

        answers = await asyncio.gather(*(ask(worker) for worker in self.workers))
        alive = []
        for worker, status in zip(list(self.workers), answers, strict=True):
            if status is None:
                self.workers.remove(worker)
                self.lost += 1
                log.warning("ray: a session worker is gone; its sessions ended, the others go on")
            else:
                alive.append((worker, status))
                self._last[id(worker)] = status
        return alive

    async def answer(self, sdp: str) -> dict[str, str]:
        import ray

        alive = await self._statuses()
        for worker, _ in sorted(alive, key=lambda pair: pair[1]["free"], reverse=True):
            try:
                reply = await worker.answer.remote(sdp)
            except ray.exceptions.RayActorError:
                continue  # died just now: the next one
            if "answer" in reply:
                return reply["answer"]
            if "bad" in reply:
                raise BadOffer(reply["bad"])
        raise HostFull(f"every session worker is full ({len(alive)} worker(s), {self.capacity} session(s) each)")

    def status(self) -> list[dict[str, Any]]:
        """The last status each living worker gave."""
        return [self._last[id(worker)] for worker in self.workers if id(worker) in self._last]

    async def refresh(self) -> list[dict[str, Any]]:
        return [status for _, status in await self._statuses()]

    async def close(self) -> None:
        import ray

        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
