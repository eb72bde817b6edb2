"""The stage types a config may name, by their `type_name`."""

from __future__ import annotations

from typing import TypeVar

from pipeline.stage import Stage

S = TypeVar("S", bound=type[Stage])
_TYPES: dict[str, type[Stage]] = {}


def register_stage(cls: S) -> S:
    """Class decorator: make a stage type available to configs under its `type_name`."""
    if not cls.type_name:
        raise ValueError(f"{cls.__name__} has no type_name")
    existing = _TYPES.get(cls.type_name)
    if existing is not None and existing is not cls:
        raise ValueError(f"stage type {cls.type_name!r} is already {existing.__module__}.{existing.__qualname__}")
    _TYPES[cls.type_name] = cls
    return cls


def stage_types() -> dict[str, type[Stage]]:
    """All registered stage types, the built-in ones included."""
    import pipeline.stages  # noqa: F401 — registers the built-in stages

    return dict(_TYPES)
