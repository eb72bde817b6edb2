"""Drive Debian's Firefox ESR headless over WebDriver BiDi (built into Firefox; no driver binary).

Just what the page test needs: start Firefox with a throwaway profile (fake camera and
microphone, loopback ICE allowed), open a tab, navigate, evaluate JavaScript.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox") or "/usr/bin/firefox-esr"
PREFS = {
    "media.navigator.streams.fake": True,  # a synthetic camera and microphone
    "media.navigator.permission.disabled": True,
    "media.peerconnection.ice.loopback": True,  # 127.0.0.1 candidates, as the server offers
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.autoplay.default": 0,
    "remote.active-protocols": 1,  # WebDriver BiDi only
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.disabledForTesting": True,
    "network.captive-portal-service.enabled": False,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Firefox:
    def __init__(self, profile: Path):
        self.profile = profile
        self.process: subprocess.Popen | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: Any = None
        self._ids = itertools.count(1)
        self.context = ""

    async def __aenter__(self) -> Firefox:
        self.profile.mkdir(parents=True, exist_ok=True)
        (self.profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items())
        )
        port = _free_port()
        self.process = subprocess.Popen(
            [
                FIREFOX,
                "--headless",
                "--no-remote",
                "--profile",
                str(self.profile),
                "--remote-debugging-port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        url = await asyncio.wait_for(asyncio.to_thread(self._bidi_url), 60)
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(f"{url}/session", max_msg_size=0)
        await self.command("session.new", {"capabilities": {}})
        tree = await self.command("browsingContext.getTree", {})
        self.context = tree["contexts"][0]["context"]
        return self

    def _bidi_url(self) -> str:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            found = re.search(r"WebDriver BiDi listening on (ws://\S+)", line)
            if found:
                return found.group(1)
        raise RuntimeError("Firefox exited before opening WebDriver BiDi")

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.command("session.end", {})
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self.process is not None:
            self.process.terminate()
            try:
                await asyncio.wait_for(asyncio.to_thread(self.process.wait), 10)
            except TimeoutError:
                self.process.kill()

    async def command(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        ident = next(self._ids)
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await self._ws.receive_json()
            if message.get("id") != ident:
                continue  # an event
            if message.get("type") == "error":
                raise RuntimeError(f"{method}: {message.get('error')}: {message.get('message')}")
            return message["result"]

    async def navigate(self, url: str) -> None:
        await self.command("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"})

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of `expression` (evaluated as JSON.stringify(expression) in the page)."""
        result = await self.command(
            "script.evaluate",
            {
                "expression": f"JSON.stringify({expression})",
                "target": {"context": self.context},
                "awaitPromise": True,
            },
        )
        if result.get("type") == "exception":
            raise RuntimeError(result["exceptionDetails"]["text"])
        value = result["result"].get("value")
        return json.loads(value) if isinstance(value, str) else None

    async def wait_for(self, expression: str, timeout_s: float = 30.0) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {expression}")
