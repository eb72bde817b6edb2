"""What a stage leaves on a frame: each stage type declares its annotation's shape as a
`TypedDict` (`Stage.Annotation`), so the shape lives in code, not only in a docstring.

The declarations are checked where it is cheap to check them, in tests (`check`): every key
declared, nothing undeclared, every value of its declared type, nested records included. A run
does not validate; the analytics writer only refuses what is not JSON
(`pipeline.io.analytics`). Fields common to every annotation (`held`) and the two shapes every
stage may give instead of its own (`Missing`) are here.
"""

from __future__ import annotations

from functools import cache
from typing import Any, NotRequired

from pydantic import ConfigDict, TypeAdapter
from typing_extensions import TypedDict


class Annotation(TypedDict):
    """Base of every stage's annotation. Its declared keys only, values strictly of their type."""

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
    held: NotRequired[bool]  # an inference stage's result from an earlier frame, held (the scheduler's cadence)


class Missing(TypedDict):
    """What a frame carries for a stage that did not run on it (failed, shed, disabled, no input)."""

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
    missing: bool
    reason: str


class Event(TypedDict):
    """One thing that happened, in a stage's `events` list. Events of each type carry their own
    details besides these (see each stage); `origin` marks one a stage only passes on."""

    __pydantic_config__ = ConfigDict(extra="allow", strict=True)  # type: ignore[misc]
    type: str
    time_s: NotRequired[float]
    origin: NotRequired[str]


def missing(reason: str) -> Missing:
    """The annotation a frame carries for a stage that gave none."""
    return {"missing": True, "reason": reason}


@cache
def _adapter(shape: type) -> TypeAdapter[Any]:
    return TypeAdapter(shape)


def check(shape: type, value: Any) -> None:
    """Raise a `pydantic.ValidationError` naming the first key that does not match `shape` (or
    `Missing`, for a missing annotation)."""
    _adapter(Missing if isinstance(value, dict) and value.get("missing") else shape).validate_python(value)
