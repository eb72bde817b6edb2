"""The WebRTC server: the page, `/offer`, and status endpoints, on aiohttp.

`POST /offer` takes `{"sdp", "type"}` as JSON and answers the same, as aiortc's example server
does, so any standard client can connect. Each offer gets a `Session` (its own pipeline run);
the models are shared by all of them through one model manager.

Safety by default: the server binds to 127.0.0.1. On any other address a token is required on
`/offer` and on every POST (`Authorization: Bearer TOKEN`, or `?token=TOKEN`): given with
`--token` or generated and printed at start. Bad requests get a 4xx with a JSON reason (wrong
content type 415, body over `MAX_BODY` 413, malformed JSON or SDP 400, missing or wrong token
401, a body slower than `BODY_TIMEOUT_S` 408); over `--max-sessions` a 503; the server keeps
serving. A connection that has not sent a whole request's headers `HEADER_TIMEOUT_S` after it
opened (or after its last answer) is closed, so half-sent requests cannot hold the server's
connections; the token is checked as soon as the headers are in, before any body is read.

Beyond this machine: `tls` serves HTTPS (a browser gives a page its camera only on https:// or
localhost), and the config's `webrtc.ice_servers` (STUN/TURN) reach both the server's peer
connections and the page, which reads them from `/api/ice`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import torch
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from pipeline.config import GraphConfig, with_targets
from pipeline.device_profiles import DeviceProfile
from pipeline.errors import ConfigError, one_line
from pipeline.model_manager.manager import ModelManager
from pipeline.webrtc.hosting import BadOffer, HostFull, SessionHost
from pipeline.webrtc.ice import browser_ice_servers, every_host_address, limit_ice_to, unused_by_aiortc
from pipeline.webrtc.prometheus import CONTENT_TYPE, Counters, Retired, exposition
from pipeline.webrtc.session import Session, parse_targets
from pipeline.webrtc.tls import Tls
from pipeline.webrtc.tracks import SILENCE_S

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 64 * 1024  # bytes: an SDP offer is a few kB
DEFAULT_MAX_SESSIONS = 4
HEADER_TIMEOUT_S = 10.0  # from a connection's start (or its last answer) to a whole request's headers
BODY_TIMEOUT_S = 10.0  # from the headers to the whole body


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


class Server:
    """Serves sessions for one graph config on one device."""

    def __init__(
        self,
        config: GraphConfig,
        *,
        device: torch.device,
        host: str = "127.0.0.1",
        port: int = 8080,
        token: str | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        profile: DeviceProfile | None = None,
        prompt_receive: bool = True,
        silence_s: float = SILENCE_S,
        placer: Any = None,
        tls: Tls | None = None,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ):
        if max_sessions < 1:
            raise ValueError(f"--max-sessions {max_sessions}: must be at least 1")
        self.config = config
        self.host = host
        self.port = port
        self.local = is_loopback(host)
        self.token = token if token or self.local else secrets.token_urlsafe(18)
        self.max_sessions = max_sessions
        # Sessions live here, or with `placer` (Ray worker actors) on other processes and machines.
        self.sessions_host = SessionHost(
            config,
            device=device,
            capacity=max_sessions,
            profile=profile,
            prompt_receive=prompt_receive,
            silence_s=silence_s,
        )
        self.placer = placer
        self.tls = tls
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.refused = 0
        self.started_s = time.monotonic()
        self._fps_mark: tuple[float, int] = (time.monotonic(), 0)
        self._fps = 0.0
        self._runner: web.AppRunner | None = None
        self.app = self._make_app()

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.add_routes(
            [
                web.get("/", self._page),
                web.static("/static", STATIC),
                web.post("/offer", self._offer),
                web.get("/api/ice", self._ice),
                web.get("/api/performance/status", self._performance),
                web.get("/api/resource/status", self._resource),
                web.post("/api/performance/targets", self._targets),
                web.post("/api/resource/load", self._load),
                web.post("/api/resource/unload", self._unload),
                web.get("/metrics", self._metrics),
            ]
        )
        app.on_shutdown.append(self._on_shutdown)
        return app

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self.local:
            limit_ice_to(["127.0.0.1"])  # a loopback server offers loopback candidates, and only those
        self.sessions_host.start()  # housekeeping between sessions too, not only while one runs
        if self.placer is not None:
            self.placer.start()
        else:  # sessions run here: the first one should not load what all of them share
            await asyncio.to_thread(self.sessions_host.warm_up)
        # aiohttp closes a connection whose next request is not in when its keep-alive timer runs
        # out, counted from the connection's start or its last answer: half-sent headers included.
        self._runner = web.AppRunner(
            self.app, access_log_class=TokenHidingAccessLogger, keepalive_timeout=self.header_timeout_s
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.tls.context if self.tls else None)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # the port when 0 was asked
        if sockets:
            self.port = sockets[0].getsockname()[1]
        where = (
            f"on {len(self.placer.workers)} Ray worker(s), {self.max_sessions} session(s) each"
            if self.placer is not None
            else f"{self.max_sessions} session(s) at most"
        )
        log.info("serving on %s/ (%s)", self.url, where)
        if self.tls is not None and self.tls.self_signed:
            log.warning(
                "a self-signed certificate, made for this run: a browser warns before it opens the page; "
                "check that it shows this SHA-256 fingerprint, then accept: %s",
                self.tls.fingerprint,
            )
        ice_servers = self.config.webrtc.ice_servers
        if ice_servers:
            log.info("ICE servers for both ends: %s", ", ".join(url for s in ice_servers for url in s.urls))
        unused = unused_by_aiortc(ice_servers)
        if unused:
            log.warning(
                "the server's own peer connections use one STUN and one TURN server; not: %s", ", ".join(unused)
            )
        if not self.local:
            log.warning("listening beyond this machine: every offer must carry the token %s", self.token)
            log.info("open it from another device at: %s", ", ".join(self.page_urls()))
            if self.tls is None:
                log.warning("plain http: a browser on another device gives the page no camera (add --tls-self-signed)")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.sessions_host.close()
        if self.placer is not None:
            await self.placer.close()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def page_urls(self) -> list[str]:
        """The page's address as another device opens it, token included: one per address of this
        machine when the server listens on all of them (0.0.0.0 or ::)."""
        scheme = "https" if self.tls is not None else "http"
        try:
            wildcard = ipaddress.ip_address(self.host).is_unspecified
        except ValueError:
            wildcard = False
        hosts = every_host_address(use_ipv6=False) if wildcard else [self.host]
        token = f"?token={self.token}" if self.token else ""
        return [f"{scheme}://{f'[{h}]' if ':' in h else h}:{self.port}/{token}" for h in hosts]

    # ----------------------------------------------------------------- requests

    def _authorized(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        given = request.query.get("token", "")
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[len("Bearer ") :]
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def _read_json(self, request: web.Request) -> dict[str, Any] | web.Response:
        if request.content_type != "application/json":
            return _error(415, f"expected application/json, got {request.content_type or 'no content type'}")
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _error(413, f"body over {MAX_BODY} bytes")
        try:
            body = await asyncio.wait_for(request.json(), self.body_timeout_s)
        except TimeoutError:
            log.info("%s %s: the body was not in after %g s", request.method, request.path, self.body_timeout_s)
            return _error(408, f"the body did not arrive within {self.body_timeout_s:g} s")
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body over {MAX_BODY} bytes")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the body is not JSON")
        except RecursionError:
            return _error(400, "the body is JSON nested too deep")
        except ConnectionError as exc:  # the client went away mid-body: one line, not a traceback
            log.info("%s %s: the client went away before its body was in (%s)", request.method, request.path, exc)
            return _error(400, "the body was cut short")
        if not isinstance(body, dict):
            return _error(400, "expected a JSON object")
        return body

    async def _page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _ice(self, request: web.Request) -> web.Response:
        """The STUN/TURN servers for the page's peer connection (behind the token: TURN
        credentials are not for everyone who can load the page)."""
        if not self._authorized(request):
            return _error(401, "a token is required (Authorization: Bearer TOKEN, or ?token=TOKEN)")
        return web.json_response({"iceServers": browser_ice_servers(self.config.webrtc.ice_servers)})

    async def _offer(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "a token is required (Authorization: Bearer TOKEN, or ?token=TOKEN)")
        body = await self._read_json(request)
        if isinstance(body, web.Response):
            return body
        if body.get("type") != "offer" or not isinstance(body.get("sdp"), str) or "m=" not in body["sdp"]:
            return _error(400, 'expected {"sdp": "<an SDP offer>", "type": "offer"}')
        where = self.placer if self.placer is not None else self.sessions_host
        try:
            answer = await where.answer(body["sdp"])
        except HostFull as exc:
            self.refused += 1
            return _error(503, str(exc))
        except BadOffer as exc:
            return _error(400, str(exc))
        return web.json_response(answer)

    @property
    def sessions(self) -> set[Session]:
        """The sessions of this process (with Ray, those on the workers are in `performance()`)."""
        return self.sessions_host.sessions

    @property
    def models(self) -> ModelManager:
        return self.sessions_host.models

    @property
    def retired(self) -> Retired:
        return self.sessions_host.retired

    @property
    def sessions_total(self) -> int:
        return self.sessions_host.sessions_total

    def counters(self) -> Counters:
        """What every session measured: this process's and, with Ray, the workers' (at their last status)."""
        counters = self.sessions_host.counters()
        if self.placer is not None:
            counters.add(self.placer.counters())
        return counters

    def frames_out(self) -> int:
        if self.placer is None:
            return self.sessions_host.frames_out()
        return self.counters().frames_out

    def fps(self) -> float:
        """Delivered frames per second over all sessions, since the last reading a second or more ago."""
        now, out = time.monotonic(), self.frames_out()
        then, before = self._fps_mark
        if now - then >= 1.0:
            self._fps = (out - before) / (now - then)
            self._fps_mark = (now, out)
        return round(self._fps, 2)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=exposition(self), headers={"Content-Type": CONTENT_TYPE})

    async def _model_request(self, request: web.Request) -> str | web.Response:
        if not self._authorized(request):
            return _error(401, "a token is required")
        if self.placer is not None:  # this process holds no models: acting here would do nothing
            return _error(501, "with --ray the models live on the session workers; each loads them as it needs")
        body = await self._read_json(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("model")
        if not isinstance(name, str) or name not in self.models.entries:
            known = ", ".join(self.models.entries) or "none yet (models register when a session starts)"
            return _error(404, f"no model {name!r}; registered: {known}")
        return name

    async def _load(self, request: web.Request) -> web.Response:
        name = await self._model_request(request)
        if isinstance(name, web.Response):
            return name

        def load() -> None:
            with self.models.use(name):
                pass

        try:
            await asyncio.to_thread(load)
        except Exception as exc:  # ModelMemoryError included: it does not fit anywhere
            return _error(409, one_line(exc))
        return web.json_response({"model": name, "device": str(self.models.device_of(name))})

    async def _unload(self, request: web.Request) -> web.Response:
        name = await self._model_request(request)
        if isinstance(name, web.Response):
            return name
        if not self.models.unload(name):
            return _error(409, f"model {name!r} is in use by a frame, or not loaded")
        return web.json_response({"model": name, "level": "disk"})

    async def _performance(self, request: web.Request) -> web.Response:
        return web.json_response(self.performance())

    async def _resource(self, request: web.Request) -> web.Response:
        if self.placer is not None:
            return web.json_response({"workers": self.placer.models()})
        return web.json_response(self.models.status())

    async def _targets(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "a token is required")
        body = await self._read_json(request)
        if isinstance(body, web.Response):
            return body
        try:
            targets = parse_targets(body)
            config = with_targets(self.config, **targets)  # the front's own record, for the status
        except (ValueError, ConfigError) as exc:
            return _error(400, one_line(exc))
        self.config = config
        changed = self.sessions_host.set_targets(targets)
        if self.placer is not None:
            changed += await self.placer.set_targets(targets)
        return web.json_response({**self.targets(), "sessions": changed})

    def targets(self) -> dict[str, float]:
        """The latency and fps targets, as last set (new sessions start with them)."""
        return {"latency_ms": self.config.targets.latency_ms, "fps": self.config.targets.fps}

    def performance(self) -> dict[str, Any]:
        """The status endpoint: every session, here or (with Ray) on a worker, as of its last status."""
        sessions = [session.status() for session in self.sessions]
        sessions_total = self.sessions_total
        workers = self.placer.status() if self.placer is not None else []
        for index, worker in enumerate(workers):
            sessions += [{**session, "worker": index} for session in worker["sessions"]]
            sessions_total += worker["sessions_total"]
        if self.placer is not None:
            sessions_total += self.placer.gone.sessions_total  # started on workers since lost
        return {
            "uptime_s": round(time.monotonic() - self.started_s, 1),
            "sessions": sessions,
            "sessions_total": sessions_total,
            "refused": self.refused,
            "max_sessions": self.max_sessions,
            "targets": self.targets(),
            "fps": self.fps(),
            "frames_out": self.frames_out(),
            **({"workers": workers, "workers_lost": self.placer.lost} if self.placer is not None else {}),
        }


async def serve(server: Server, stop: asyncio.Event) -> None:
    """Run `server` until `stop` is set (Ctrl-C)."""
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()


class TokenHidingAccessLogger(AbstractAccessLogger):
    """One access line per request, as aiohttp writes it, but never with a `?token=` value: logs
    are read by more people than the token is meant for."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        query = "&".join(f"{key}=…" if key == "token" else f"{key}={value}" for key, value in request.query.items())
        target = request.path + (f"?{query}" if query else "")
        status, size = response.status, response.body_length
        self.logger.info('%s "%s %s" %d %s %.3fs', request.remote, request.method, target, status, size, time)
