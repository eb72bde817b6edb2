"""What a stage leaves on a frame: each stage type declares its annotation's shape as a
`TypedDict` (`Stage.Annotation`), so the shape lives in code, not only in a docstring.

The declarations are checked where it is cheap to check them, in tests (`check`): every key
declared, nothing undeclared, every value of its declared type, nested records included. A run
does not validate; the analytics writer only refuses what is not JSON
(`pipeline.io.analytics`). Fields common to every annotation (`held`) and the two shapes every
stage may give instead of its own (`Missing`) are here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
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


def strict_json(record: dict[str, Any], rejected: Callable[[str, Exception], None]) -> str:
    """`record` (a frame's analytics record) as compact JSON, strictly: a value that is not JSON
    (a tensor, a NumPy array or float32, NaN) is never turned into something that looks like
    data. Its top-level entry, one stage's annotation, is written as missing instead, with the
    reason, and `rejected(key, error)` is told; the rest of the record is kept."""
    try:
        return _dumps(record)
    except (TypeError, ValueError):
        pass
    kept = dict(record)
    for key, value in record.items():
        try:
            _dumps({key: value})
        except (TypeError, ValueError) as exc:
            rejected(key, exc)
            kept[key] = missing(f"not JSON: {exc}")
    return _dumps(kept)


class NotJson(dict[str, int]):
    """Per stage, the records that carried its annotation as missing because it was not JSON.
    Given to `strict_json` as `rejected`, it counts and names each stage once in `log`."""

    def __init__(self, log: logging.Logger, where: str, outcome: str):
        super().__init__()
        self._log, self._where, self._outcome = log, where, outcome

    def __call__(self, stage: str, error: Exception) -> None:
        if stage not in self:
            self._log.warning(
                "%s: stage %r left a value that is not JSON (%s); %s", self._where, stage, error, self._outcome
            )
        self[stage] = self.get(stage, 0) + 1


def is_json(value: Any) -> bool:
    """Whether `value` is JSON as it is (no conversion, no NaN)."""
    try:
        _dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


@cache
def _adapter(shape: type) -> TypeAdapter[Any]:
    return TypeAdapter(shape)


def check(shape: type, value: Any) -> None:
    """Raise a `pydantic.ValidationError` naming the first key that does not match `shape` (or
    `Missing`, for a missing annotation)."""
    _adapter(Missing if isinstance(value, dict) and value.get("missing") else shape).validate_python(value)
