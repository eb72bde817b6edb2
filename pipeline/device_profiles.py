"""Device profiles: how much memory a device gives models, split into zones, and its limits.

One YAML file per device class in `configs/devices/`. `--device-profile NAME` picks one;
otherwise it is detected from the GPU's name, then from its memory size (the largest profile
that fits), and `cpu` without a GPU. The model manager takes its budgets from the profile, and
the frame scheduler its GPU memory and temperature limits.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

PROFILE_DIR = Path(__file__).resolve().parent.parent / "configs" / "devices"
MB = 1 << 20
ZONES = ("critical", "high", "flexible")


class ProfileMatch(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    names: tuple[str, ...] = ()  # substrings of the GPU's name (case-insensitive)
    memory_mb: tuple[int, int] | None = None  # [low, high] of the card's total memory


class DeviceProfile(BaseModel):
    """One device class's memory plan and limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["cpu", "cuda"]
    match: ProfileMatch = ProfileMatch()
    memory_mb: int = Field(gt=0)  # the device's memory (cpu: the budget for models)
    reserved_mb: int = Field(0, ge=0)  # taken first: CUDA context, framework, frame buffers
    zones: dict[str, int]  # zone → MB for models placed there
    host_mb: int = Field(0, ge=0)  # host memory for evicted models waiting to come back (0: none)
    warning: float = Field(0.75, gt=0.0, lt=1.0)  # share of memory in use: stop preloading
    critical: float = Field(0.85, gt=0.0, le=1.0)  # ... and unload low-priority models, largest first
    fragmentation_mb: int = Field(512, ge=0)  # reserved − allocated above this: release cached blocks
    gpu_memory_max: float = Field(0.90, gt=0.0, le=1.0)  # the scheduler steps down above this
    gpu_temperature_max_c: float = Field(83.0, gt=0.0, le=120.0)
    speed: float = Field(1.0, gt=0.0)  # relative speed, for placing models on several devices
    idle_unload_s: float = Field(900.0, ge=0.0)  # 0: never unload for idleness
    preload: bool = True
    # MB one file's run takes on this card in a Ray batch (its CUDA context and the graph's
    # models): each task declares that share of a GPU, so several files share a big card.
    # None: a task takes the whole card.
    file_task_mb: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _zones_fit(self) -> DeviceProfile:
        unknown = set(self.zones) - set(ZONES)
        if unknown:
            raise ValueError(f"unknown zone(s) {', '.join(sorted(unknown))}; zones are {', '.join(ZONES)}")
        if "flexible" not in self.zones:
            raise ValueError("a profile needs a flexible zone")
        if sum(self.zones.values()) + self.reserved_mb > self.memory_mb:
            raise ValueError(
                f"zones ({sum(self.zones.values())} MB) + reserved ({self.reserved_mb} MB) exceed memory "
                f"({self.memory_mb} MB)"
            )
        if self.warning >= self.critical:
            raise ValueError("the warning threshold must be below the critical one")
        if self.file_task_mb is not None and not self.reserved_mb < self.file_task_mb <= self.memory_mb:
            raise ValueError(
                f"file_task_mb ({self.file_task_mb} MB) must be above reserved ({self.reserved_mb} MB) "
                f"and at most memory ({self.memory_mb} MB)"
            )
        return self

    @property
    def file_task_share(self) -> float:
        """The share of one device a file's task takes (1.0 without `file_task_mb`)."""
        return 1.0 if self.file_task_mb is None else self.file_task_mb / self.memory_mb

    def file_task_slice(self) -> DeviceProfile:
        """This profile cut to one file task's share of the card.

        Each task is its own process with its own model manager; planned against the whole
        card, tasks sharing it would together promise more memory than it has. The CUDA
        context (`reserved_mb`) is each process's own, so it is kept whole and the zones shrink
        to fit what is left.
        """
        if self.file_task_mb is None:
            return self
        room = self.file_task_mb - self.reserved_mb
        scale = min(1.0, room / sum(self.zones.values()))
        zones = {zone: int(mb * scale) for zone, mb in self.zones.items()}
        return DeviceProfile.model_validate(
            {
                **self.model_dump(),
                "name": f"{self.name} ({self.file_task_mb} MB slice)",
                "memory_mb": self.file_task_mb,
                "zones": zones,
                "host_mb": int(self.host_mb * self.file_task_share),
            }
        )

    def zone_bytes(self) -> dict[str, int]:
        return {zone: mb * MB for zone, mb in self.zones.items()}


def profile_names() -> list[str]:
    return sorted(path.stem for path in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A profile by name (configs/devices/NAME.yaml) or path; a ConfigError names what is wrong."""
    path = Path(name_or_path)
    if not path.exists():
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"--device-profile {name_or_path}: no such profile (one of: {', '.join(profile_names())})")
    try:
        return DeviceProfile.model_validate(yaml.safe_load(path.read_text()))
    except (ValidationError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) if len(first) > 1 else str(exc)
        raise ConfigError(f"{path}: {detail}") from None


def pick_profile(gpu_name: str, memory_mb: int, profiles: list[DeviceProfile]) -> DeviceProfile | None:
    """The profile for a GPU: by name, else the largest whose memory fits the card's; None if none fits."""
    cards = [p for p in profiles if p.kind == "cuda"]
    lowered = gpu_name.lower()
    for profile in cards:
        in_range = profile.match.memory_mb is None or (
            profile.match.memory_mb[0] <= memory_mb <= profile.match.memory_mb[1]
        )
        if in_range and any(name.lower() in lowered for name in profile.match.names):
            return profile
    fitting = [p for p in cards if p.memory_mb <= memory_mb * 1.02]
    return max(fitting, key=lambda p: p.memory_mb) if fitting else None


def detect_profile(device: torch.device) -> DeviceProfile:
    """The profile for this run's device (see the module docstring)."""
    if device.type != "cuda":
        return load_profile("cpu")
    properties = torch.cuda.get_device_properties(device)
    memory_mb = properties.total_memory // MB
    profiles = [load_profile(name) for name in profile_names()]
    profile = pick_profile(properties.name, memory_mb, profiles)
    if profile is None:
        smallest = min((p for p in profiles if p.kind == "cuda"), key=lambda p: p.memory_mb)
        log.warning(
            "%s (%d MB) is smaller than every device profile; using %s — give --device-profile a profile of its own",
            properties.name,
            memory_mb,
            smallest.name,
        )
        return smallest
    log.info("device profile %s for %s (%d MB)", profile.name, properties.name, memory_mb)
    return profile
