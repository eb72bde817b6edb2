"""The model manager's report: what is loaded where, with its counters, as JSON-ready numbers
(the run report's `models`, `/api/resource/status`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.device_profiles import MB

if TYPE_CHECKING:
    from pipeline.model_manager.manager import ModelManager


def status(manager: ModelManager) -> dict[str, Any]:
    """What is loaded where, with counters (the caller holds the manager's lock)."""
    entries = list(manager.entries.values())
    return {
        "policy": manager.policy,
        "devices": [
            {
                "key": pool.key,
                "zones_mb": {z: round(c / MB, 1) for z, c in pool.zones.items()},
                "used_mb": {z: round(u / MB, 3) for z, u in pool.used.items()},
                "reserved_mb": round(pool.reserved / MB, 1),
                "peak_mb": round(pool.peak / MB, 3),
                "zone_peaks_mb": {z: round(u / MB, 3) for z, u in pool.zone_peaks.items()},
                "in_use": round(pool.in_use(), 4),
                "level": pool.level(),
            }
            for pool in manager.pools
        ],
        "host": {
            "budget_mb": round(manager.host_budget / MB, 1),
            "used_mb": round(manager.host_used / MB, 3),
            "peak_mb": round(manager.host_peak / MB, 3),
            "cpu_fallback_mb": round(manager.fallback_used / MB, 3),
        },
        "models": [
            {
                "name": e.name,
                "priority": e.spec.priority,
                "level": e.level,
                "device": str(manager.device_of(e.name)) if manager.device_of(e.name) is not None else None,
                "zone": e.zone,
                "size_mb": round(e.nbytes / MB, 3),
                "load_peak_mb": round(e.load_peak / MB, 3),
                "precision": e.precision,
                "load_s": round(e.load_s, 4),
                "load_s_total": round(e.load_s_total, 4),
                "last_use_s_ago": round(manager.clock() - e.last_use, 3) if e.uses else None,
                "uses": e.uses,
                "hits": e.hits,
                "misses": e.misses,
                "evictions": e.evictions,
                "fallbacks": e.fallbacks,
                "loads": e.loads,
                "restores": e.restores,
            }
            for e in entries
        ],
        "totals": {
            key: sum(getattr(e, key) for e in entries)
            for key in ("hits", "misses", "evictions", "fallbacks", "loads", "restores")
        },
        "copies": manager.copies,
        "fragmentation_mb": round(manager.fragmentation / MB, 3),
        "cache_releases": manager.cache_releases,
        "batchers": {
            name: {
                "users": b.users,
                "calls": b.calls,
                "requests": b.requests,
                "rows": b.rows,
                "wait_ms": b.wait_s * 1000,
                "max_rows": b.max_batch,
            }
            for name, b in manager.batchers.items()
        },
        "events": manager.events[-20:],
    }
