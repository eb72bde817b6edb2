"""Live sessions across Ray worker actors: `--serve --ray ADDRESS`.

The HTTP server (page, `/offer`, status, metrics) stays in front; each Ray worker actor owns a
`SessionHost` (its models and its sessions) on its own process, GPU and machine. An offer goes
to the worker with the most free room, which answers it; from then on the browser's media and
data channel run straight to that worker, not through the front. When every worker is full the
front answers 503. The front asks every worker for its status every `REFRESH_S`: the status
and metrics endpoints add up the workers' sessions and counters, and a worker that died, or
stopped answering (it is then killed, so that it cannot go on serving sessions the front has
written off), is dropped from placement within seconds. It takes only its own sessions with
it: the other workers go on streaming, and the page of a session that ended shows that the
server stopped answering.

Ray is imported only here, and this module only when `--ray` is given with `--serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

import torch

from pipeline.config import GraphConfig
from pipeline.webrtc.hosting import BadOffer, HostFull, SessionHost
from pipeline.webrtc.prometheus import Counters
from pipeline.webrtc.tracks import SILENCE_S

log = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 5.0  # a worker that answered before and not this fast now is taken as gone
REFRESH_S = 2.0  # how often the front asks every worker for its status


def placement_order(statuses: list[dict[str, Any]]) -> list[int]:
    """The workers to offer a session to, in turn: most free room first, full ones not at all.

    Most free room (not the first with any) spreads sessions evenly, so each keeps the most
    headroom for the load its sessions add as they climb the quality ladder.
    """
    with_room = [index for index, status in enumerate(statuses) if status["free"] > 0]
    return sorted(with_room, key=lambda index: statuses[index]["free"], reverse=True)


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
        self.host.warm_up()  # before the first offer is placed here

    async def answer(self, sdp: str) -> dict[str, Any]:
        """{"answer": …}, or {"full": reason} / {"bad": reason}: exceptions would arrive wrapped."""
        try:
            return {"answer": await self.host.answer(sdp)}
        except HostFull as exc:
            return {"full": str(exc)}
        except BadOffer as exc:
            return {"bad": str(exc)}

    async def status(self) -> dict[str, Any]:
        """The host's status, its process and its counters (as plain data, for the front to add up)."""
        return {**self.host.status(), "pid": os.getpid(), "counters": self.host.counters().to_json()}

    async def set_targets(self, targets: dict[str, float]) -> int:
        return self.host.set_targets(targets)

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

        from pipeline.cluster.folder_runs import connect

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
        self.gone = Counters()  # what the workers that died had counted: it still counts
        self._dropped: list[Any] = []  # workers that stopped answering: killed, and again at close
        self._refresher: asyncio.Task[None] | None = None
        log.info("ray: %d session worker(s), %d session(s) each", workers, capacity)

    def start(self) -> None:
        """Refresh the workers' statuses every REFRESH_S (on the running event loop) until `close`."""
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_every())

    async def _refresh_every(self) -> None:
        while True:
            await self._statuses()
            await asyncio.sleep(REFRESH_S)

    async def _statuses(self) -> list[tuple[Any, dict[str, Any]]]:
        import ray

        async def ask(worker: Any) -> dict[str, Any] | str:
            try:
                return await asyncio.wait_for(worker.status.remote(), STATUS_TIMEOUT_S)
            except ray.exceptions.RayActorError:
                return "dead"
            except TimeoutError:
                return "silent"

        workers = list(self.workers)
        answers = await asyncio.gather(*(ask(worker) for worker in workers))
        alive = []
        for worker, status in zip(workers, answers, strict=True):
            if isinstance(status, dict):
                alive.append((worker, status))
                self._last[id(worker)] = status
            elif status == "dead" or id(worker) in self._last:
                self._drop(worker)
            # else still starting (loading torch and its models): not placed on, not written off
        return alive

    def _drop(self, worker: Any) -> None:
        """Take a dead or silent worker out of placement; kill it, in case it is only stuck."""
        import ray

        if worker not in self.workers:
            return  # a concurrent status round dropped it already
        self.workers.remove(worker)
        self._dropped.append(worker)
        last = self._last.pop(id(worker), None)
        if last is not None:
            self.gone.add(Counters.from_json(last["counters"]).ended())
        self.lost += 1
        with contextlib.suppress(Exception):  # already dead: nothing to kill
            ray.kill(worker)
        log.warning("ray: a session worker is gone (%d left); its sessions ended, the others go on", len(self.workers))

    async def answer(self, sdp: str) -> dict[str, str]:
        import ray

        alive = await self._statuses()
        for index in placement_order([status for _, status in alive]):
            worker = alive[index][0]
            try:
                reply = await worker.answer.remote(sdp)
            except ray.exceptions.RayActorError:
                continue  # died just now: the next one
            if "answer" in reply:
                return reply["answer"]
            if "bad" in reply:
                raise BadOffer(reply["bad"])
        if not alive and self.workers:
            raise HostFull(f"the {len(self.workers)} session worker(s) are still starting; try again in a moment")
        raise HostFull(f"every session worker is full ({len(alive)} worker(s), {self.capacity} session(s) each)")

    def status(self) -> list[dict[str, Any]]:
        """The last status each living worker gave (without its counters: `counters` adds them up)."""
        return [
            {key: value for key, value in self._last[id(worker)].items() if key != "counters"}
            for worker in self.workers
            if id(worker) in self._last
        ]

    def counters(self) -> Counters:
        """Every worker's counters at its last status, and those of the workers that died."""
        total = Counters()
        total.add(self.gone)
        for index, worker in enumerate(self.workers):
            if id(worker) in self._last:
                counters = Counters.from_json(self._last[id(worker)]["counters"])
                counters.models = {  # the same device name on two workers is two devices
                    "models": counters.models["models"],
                    "devices": [{**d, "key": f"worker {index}: {d['key']}"} for d in counters.models["devices"]],
                }
                total.add(counters)
        return total

    def models(self) -> list[dict[str, Any]]:
        """Each living worker's model manager status, at its last status."""
        return [self._last[id(w)]["counters"]["models"] for w in self.workers if id(w) in self._last]

    async def refresh(self) -> list[dict[str, Any]]:
        await self._statuses()
        return self.status()

    async def set_targets(self, targets: dict[str, float]) -> int:
        """New targets for every session on every worker, and its later ones; how many took them."""
        import ray

        async def tell(worker: Any) -> int:
            try:
                return await asyncio.wait_for(worker.set_targets.remote(targets), STATUS_TIMEOUT_S)
            except (ray.exceptions.RayActorError, TimeoutError):
                return 0  # gone: the next status round drops it

        return sum(await asyncio.gather(*(tell(worker) for worker in list(self.workers))))

    async def close(self) -> None:
        import ray

        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        for worker in self.workers + self._dropped:
            with contextlib.suppress(Exception):  # already dead: nothing to kill
                ray.kill(worker)
        self.workers = []
        self._dropped = []
