"""Which local addresses ICE offers as host candidates.

aioice (aiortc's ICE) gathers candidates on every interface except loopback, and has no option
to choose. A server bound to 127.0.0.1 should be reachable over 127.0.0.1 and nothing else:
`limit_ice_to(["127.0.0.1"])` wraps aioice's address lookup so it returns exactly those
addresses. The limit is process-wide (aioice has one lookup); `limit_ice_to(None)` lifts it.
"""

from __future__ import annotations

import aioice.ice

_original = aioice.ice.get_host_addresses
_allowed: list[str] | None = None


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _allowed is None:
        return _original(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return [a for a in _allowed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


def limit_ice_to(addresses: list[str] | None) -> None:
    """Offer only `addresses` as host candidates from now on (None: every interface, as aioice does)."""
    global _allowed
    _allowed = list(addresses) if addresses is not None else None
    aioice.ice.get_host_addresses = _host_addresses
