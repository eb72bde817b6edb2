"""ICE: which local addresses are offered as host candidates, and the STUN/TURN servers used.

aioice (aiortc's ICE) gathers candidates on every interface except loopback, and has no option
to choose. A server bound to 127.0.0.1 should be reachable over 127.0.0.1 and nothing else:
`limit_ice_to(["127.0.0.1"])` wraps aioice's address lookup so it returns exactly those
addresses. The limit is process-wide (aioice has one lookup); `limit_ice_to(None)` lifts it.

The config's `webrtc.ice_servers` (and `--ice-server`) reach both ends: the server's peer
connections, as aiortc's `RTCIceServer`s, and the page, which gets them from `/api/ice`.
aiortc uses the first STUN and the first TURN server it is given (no `stuns:`, and a TURN over
TLS only over TCP, its default); a browser uses them all.
"""

from __future__ import annotations

import logging

import aioice.ice
from aiortc import RTCIceServer

from pipeline.config import IceServerConfig

log = logging.getLogger(__name__)

_original = aioice.ice.get_host_addresses
_allowed: list[str] | None = None


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _allowed is None:
        return _original(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return [a for a in _allowed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


def every_host_address(*, use_ipv6: bool) -> list[str]:
    """This machine's addresses on every interface but loopback, whatever `limit_ice_to` says."""
    return _original(use_ipv4=True, use_ipv6=use_ipv6)


def limit_ice_to(addresses: list[str] | None) -> None:
    """Offer only `addresses` as host candidates from now on (None: every interface, as aioice does)."""
    global _allowed
    _allowed = list(addresses) if addresses is not None else None
    aioice.ice.get_host_addresses = _host_addresses


def rtc_ice_servers(servers: list[IceServerConfig]) -> list[RTCIceServer]:
    """The servers as aiortc takes them (the server's own peer connections)."""
    return [RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential) for s in servers]


def browser_ice_servers(servers: list[IceServerConfig]) -> list[dict[str, object]]:
    """The servers as a browser's `RTCPeerConnection({iceServers})` takes them."""
    return [s.model_dump(exclude_none=True) for s in servers]


def unused_by_aiortc(servers: list[IceServerConfig]) -> list[str]:
    """URLs the server's own peer connections will not use (aiortc takes one STUN and one TURN
    server, no STUN over TLS, and a TLS TURN only over TCP); the page still gets them."""
    unused, stun, turn = [], False, False
    for url in (url for s in servers for url in s.urls):
        if url.startswith("stun:") and not stun:
            stun = True
        elif url.startswith("turn") and not turn and (url.startswith("turn:") or not url.endswith("?transport=udp")):
            turn = True
        else:
            unused.append(url)
    return unused
