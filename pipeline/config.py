"""Graph configs: the YAML schema, loaded and checked before the first frame.

Every error names where it is — the stage and the key — in one line, so a wrong config fails
at start-up with a message a user can act on, never at frame 1,000.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_QUEUE_SIZE = 4  # frames waiting in front of each stage (batch mode)
DEFAULT_RING_SLOTS = 8  # frames in flight at once, all stages together


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RingConfig(_Strict):
    slots: int = Field(DEFAULT_RING_SLOTS, ge=1, le=1024)
    # auto: `latest` for live sources (newest frame wins), `block` for files (nothing dropped)
    policy: Literal["auto", "block", "latest"] = "auto"


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


def with_lines_to_say(config: GraphConfig, lines: list[str]) -> GraphConfig:
    """`config` with `lines` added to what each voice stage says; an error if the graph has none."""
    stages = []
    found = False
    for spec in config.stages:
        if spec.type == "voice":
            found = True
            said = list(spec.options.get("say", ())) + list(lines)
            spec = spec.model_copy(update={"options": {**spec.options, "say": said}})
        stages.append(spec)
    if not found:
        raise ConfigError(f"--say: graph {config.name!r} has no voice stage to speak with")
    return config.model_copy(update={"stages": stages})
