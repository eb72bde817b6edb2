"""Which stage class a config's `type` names.

A type is found in one of three places, in this order:
- the built-in table below (name → `module:Class`), imported only when a graph names it, so
  importing this module imports no stage and no model, and a stage module imports nothing
  from here (no cycle);
- the types registered by code with `register_stage` (a test's, an embedding application's);
- an import path, `package.module:Class`, naming a `Stage` subclass: a stage of your own is
  one file on the Python path and one line in a config, with nothing to register.
"""

from __future__ import annotations

import importlib
from typing import TypeVar

from pipeline.errors import ConfigError
from pipeline.stage import Stage

S = TypeVar("S", bound=type[Stage])

BUILT_IN: dict[str, str] = {
    "passthrough": "pipeline.stages.passthrough:PassThrough",
    "frame_stats": "pipeline.stages.frame_stats:FrameStats",
    "audio_level": "pipeline.stages.audio_level:AudioLevel",
    "emotion": "pipeline.stages.emotion.stage:Emotion",
    "voice": "pipeline.stages.voice.stage:Voice",
    "avatar": "pipeline.stages.avatar:Avatar",
    "context": "pipeline.stages.context.stage:Context",
    "face_overlay": "pipeline.stages.face_overlay:FaceOverlay",
    "meter_overlay": "pipeline.stages.meter_overlay:MeterOverlay",
}
_REGISTERED: dict[str, type[Stage]] = {}


def register_stage(cls: S) -> S:
    """Make a stage type available to configs under its `type_name` (usable as a decorator)."""
    if not cls.type_name:
        raise ValueError(f"{cls.__name__} has no type_name")
    built_in = BUILT_IN.get(cls.type_name)
    if built_in is not None:
        if built_in == f"{cls.__module__}:{cls.__qualname__}":
            return cls  # a built-in stage registering itself: it is in the table already
        raise ValueError(f"stage type {cls.type_name!r} is already {built_in}")
    taken = _REGISTERED.get(cls.type_name)
    if taken is not None and taken is not cls:
        raise ValueError(f"stage type {cls.type_name!r} is already {taken.__module__}.{taken.__qualname__}")
    _REGISTERED[cls.type_name] = cls
    return cls


def known_types() -> list[str]:
    """The names a config may use without an import path, sorted."""
    return sorted({*BUILT_IN, *_REGISTERED})


def stage_type(name: str) -> type[Stage]:
    """The class `name` stands for, or a ConfigError saying why there is none."""
    if name in BUILT_IN:
        return _load(BUILT_IN[name], name)
    if name in _REGISTERED:
        return _REGISTERED[name]
    if ":" in name:
        return _load(name, name)
    raise ConfigError(f"unknown stage type {name!r} (known: {', '.join(known_types())}; or give module:Class)")


def stage_types() -> dict[str, type[Stage]]:
    """Every built-in and registered type by name (imports every built-in stage)."""
    return {name: stage_type(name) for name in known_types()}


def _load(path: str, name: str) -> type[Stage]:
    module_name, _, attribute = path.partition(":")
    if not all(part.isidentifier() for part in module_name.split(".")) or not attribute.isidentifier():
        raise ConfigError(f"stage type {name!r}: not an import path of the form package.module:Class")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:  # not found, or the module itself fails as it is imported
        raise ConfigError(f"stage type {name!r}: cannot import {path} ({type(exc).__name__}: {exc})") from None
    if not (isinstance(found, type) and issubclass(found, Stage)):
        raise ConfigError(f"stage type {name!r}: {path} is not a Stage class")
    return found
