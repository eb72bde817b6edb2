"""Graph configs: the YAML schema, loaded and checked before the first frame.

Every error names where it is — the stage and the key — in one line, so a wrong config fails
at start-up with a message a user can act on, never at frame 1,000.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError
from pipeline.scheduling.ladder import DEFAULT_LADDER, check_ladder

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_QUEUE_SIZE = 4  # frames waiting in front of each stage (batch mode)
DEFAULT_RING_SLOTS = 8  # frames in flight at once, all stages together

# The frame scheduler's controller (`pipeline.scheduling.controller`): defaults of `quality:`.
CONTROL_PERIOD_S = 0.25  # how often `decide` runs in a pipeline
WINDOW_S = 2.0  # the sliding window the p95 is taken over
DOWN_COOLDOWN_S = 0.5  # at least this long between two steps down (the last one must take effect)
CLIMB_AFTER_S = 3.0  # sustained margin needed before a step up
CLIMB_MARGIN = 0.7  # "margin" is a p95 below this fraction of the budget
CLIMB_BUSY = 0.6  # climb only while the busiest stage needs less than this share of each frame's time


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RingConfig(_Strict):
    slots: int = Field(DEFAULT_RING_SLOTS, ge=1, le=1024)
    # auto: `latest` for live sources (newest frame wins), `block` for files (nothing dropped)
    policy: Literal["auto", "block", "latest"] = "auto"


class TargetsConfig(_Strict):
    """What a live run holds: end-to-end latency (capture to output) and frame rate."""

    latency_ms: float = Field(50.0, gt=0.0, le=60_000.0)  # each frame's deadline is its capture time + this
    fps: float = Field(120.0, gt=0.0, le=1000.0)  # a faster source is thinned to this rate on arrival


class QualityConfig(_Strict):
    """The frame scheduler: when it may lower quality, along which ladder, and how it decides."""

    # live: on for live (and --realtime) runs, off for files; auto: always on; off: never.
    mode: Literal["live", "auto", "off"] = "live"
    ladder: tuple[str, ...] = DEFAULT_LADDER  # rung names in order, from `full` down (pipeline.scheduling.ladder)
    control_period_s: float = Field(CONTROL_PERIOD_S, gt=0.0, le=10.0)
    window_s: float = Field(WINDOW_S, gt=0.0, le=60.0)  # the p95 is taken over this much recent time
    down_cooldown_s: float = Field(DOWN_COOLDOWN_S, ge=0.0, le=60.0)
    climb_after_s: float = Field(CLIMB_AFTER_S, ge=0.0, le=600.0)  # sustained margin before a step up
    climb_margin: float = Field(CLIMB_MARGIN, gt=0.0, lt=1.0)  # "margin": p95 under this × the budget
    climb_busy: float = Field(CLIMB_BUSY, gt=0.0, le=1.0)  # ... and the busiest stage busy less than this
    # Used share of GPU memory, and GPU temperature, that force a step down; None: the device profile's.
    gpu_memory_max: float | None = Field(None, gt=0.0, le=1.0)
    gpu_temperature_max_c: float | None = Field(None, gt=0.0, le=120.0)

    @field_validator("ladder", mode="before")
    @classmethod
    def _known_rungs(cls, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list | tuple) or not all(isinstance(name, str) for name in value):
            raise ValueError("expected a list of rung names")
        return check_ladder(value)


# stun:host[:port], turn:host[:port][?transport=udp|tcp], and their TLS forms (RFC 7064, 7065).
# A host name or an IPv4 address: aiortc cannot parse an IPv6 literal ([::1]).
ICE_URL = re.compile(r"^(stuns?:[A-Za-z0-9.\-]+(:\d{1,5})?|turns?:[A-Za-z0-9.\-]+(:\d{1,5})?(\?transport=(udp|tcp))?)$")


class IceServerConfig(_Strict):
    """A STUN or TURN server, as a browser's RTCPeerConnection takes it: both ends of every
    session use it, so peers that cannot see each other directly (NAT, another network) connect."""

    urls: list[str] = Field(min_length=1)
    username: str | None = None
    credential: str | None = None

    @field_validator("urls", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> list[str]:
        urls = [value] if isinstance(value, str) else value
        if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
            raise ValueError("expected a URL or a list of URLs")
        for url in urls:
            if not ICE_URL.match(url):
                if "[" in url:
                    raise ValueError(f"{url!r}: give a host name or an IPv4 address (aiortc takes no IPv6 literal)")
                raise ValueError(
                    f"{url!r} is not a stun:HOST[:PORT] or turn:HOST[:PORT][?transport=udp|tcp] URL (or stuns:, turns:)"
                )
        return urls

    @model_validator(mode="after")
    def _relays_have_credentials(self) -> IceServerConfig:
        relays = [url for url in self.urls if url.startswith("turn")]
        if relays and not (self.username and self.credential):
            raise ValueError(f"{relays[0]}: a TURN server needs a username and a credential")
        return self


class WebRtcConfig(_Strict):
    """How WebRTC sessions (`--serve`) reach their peers."""

    ice_servers: list[IceServerConfig] = []


class StageSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")
    type: str
    after: list[str] = []  # nodes whose output this stage waits for; none = straight from the source
    priority: int = Field(0, ge=0, le=100)  # higher = more important
    workers: int = Field(1, ge=1, le=64)  # concurrent calls of this stage; output order is restored
    options: dict[str, Any] = {}


class GraphConfig(_Strict):
    name: str = "graph"
    queue_size: int = Field(DEFAULT_QUEUE_SIZE, ge=1, le=1024)
    max_consecutive_failures: int = Field(5, ge=1)  # then the stage is disabled
    ring: RingConfig = RingConfig()
    targets: TargetsConfig = TargetsConfig()
    quality: QualityConfig = QualityConfig()
    # Where work beside the frames runs (pipeline.side_work): auto, beside them on live runs and in
    # line on file runs (the same output every run); beside, always beside; inline, always in line.
    side_work: Literal["auto", "beside", "inline"] = "auto"
    webrtc: WebRtcConfig = WebRtcConfig()
    stages: list[StageSpec] = []


def describe_validation_error(exc: ValidationError, data: Any) -> str:
    """One line naming, for each problem, the stage (by name where it has one) and the key."""
    problems = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "stages" and isinstance(loc[1], int):
            index = loc[1]
            stage = data.get("stages", [])[index] if isinstance(data, dict) else None
            label = stage.get("name") if isinstance(stage, dict) else None
            where = f"stage {label!r}" if isinstance(label, str) else f"stages[{index}]"
            loc = loc[2:]
        key = ".".join(str(part) for part in loc)
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "missing key"
        where = ", ".join(part for part in (where, f"key {key!r}" if key else "") if part)
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def parse_config(data: Any, origin: str = "config") -> GraphConfig:
    """Check a graph config given as plain data (e.g. from YAML)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return GraphConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {describe_validation_error(exc, data)}") from None


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path as given, or a bare name looked up in configs/ (`default` → configs/default.yaml)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config {str(name_or_path)!r} not found (a YAML path, or one of: {known})")


def load_config(name_or_path: str | Path) -> GraphConfig:
    """Read and check a graph config from YAML."""
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{where}: {problem}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    return parse_config(data, str(path))


def with_ice_servers(config: GraphConfig, servers: list[IceServerConfig]) -> GraphConfig:
    """`config` with `servers` after those its `webrtc.ice_servers` names (the command line's)."""
    webrtc = config.webrtc.model_copy(update={"ice_servers": [*config.webrtc.ice_servers, *servers]})
    return config.model_copy(update={"webrtc": webrtc})


def with_targets(
    config: GraphConfig, *, quality: str | None = None, latency_ms: float | None = None, fps: float | None = None
) -> GraphConfig:
    """`config` with the scheduler's mode and targets overridden where given (the command line's flags)."""
    targets = config.targets.model_dump()
    if latency_ms is not None:
        targets["latency_ms"] = latency_ms
    if fps is not None:
        targets["fps"] = fps
    modes = config.quality.model_dump()
    if quality is not None:
        modes["mode"] = quality
    data = config.model_dump() | {"targets": targets, "quality": modes}
    try:
        return GraphConfig.model_validate(data)
    except ValidationError as exc:
        flags = {"targets.latency_ms": "--latency-ms", "targets.fps": "--target-fps", "quality.mode": "--quality"}
        message = describe_validation_error(exc, data)
        for key, flag in flags.items():
            message = message.replace(f"key {key!r}", flag)
        raise ConfigError(message) from None
