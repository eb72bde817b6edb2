"""What each rung of the quality ladder does: rung names in, knob settings out.

The ladder is cumulative: rung k applies every step from rung 1 to rung k, so moving one rung
changes one thing. The controller (`pipeline.scheduling.controller`) only moves along names; this module
turns the current name into `QualitySettings`, which the executor hands to every stage
(`Stage.apply_quality`), to the sink (output size) and to its own admission (source rate,
shedding).

A rung that would change nothing in this run (no stage it acts on, a sink that cannot resize)
is left out of the ladder the controller sees, so a step down always buys something.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

RUNG_EFFECTS: dict[str, dict[str, Any]] = {
    "full": {},
    "inference_every_2": {"inference_every": 2},  # inference stages run on every 2nd frame, hold results between
    "inference_every_3": {"inference_every": 3},
    "lower_inference_resolution": {"inference_scale": 0.5},  # detector input at half the width
    "lower_precision": {"precision": "reduced"},  # fp16 on a GPU, int8 dynamic quantization on a CPU
    "shed_lowest_priority": {"shed": True},  # the lowest-priority stage(s) stop running
    "lower_output_resolution": {"output_scale": 0.5},  # what the sink shows or sends, at half the size
    "lower_source_fps": {"fps_divisor": 2},  # every 2nd frame is dropped on arrival (its audio still plays)
    "lower_source_fps_3": {"fps_divisor": 3},  # 1 frame in 3 admitted
    "lower_source_fps_4": {"fps_divisor": 4},  # 1 frame in 4: the last valve, when even the cheapest frame is too slow
}
DEFAULT_LADDER = tuple(RUNG_EFFECTS)


@dataclass(frozen=True)
class QualitySettings:
    """The knobs at one rung. Stages read the ones that concern them and ignore the rest."""

    rung: str = "full"
    inference_every: int = 1  # inference stages (`Stage.inference`) run on 1 frame in this many
    inference_scale: float = 1.0  # × the configured inference (detector) width
    precision: Literal["full", "reduced"] = "full"
    shed: bool = False  # the lowest-priority stage(s) are skipped
    output_scale: float = 1.0  # × the output picture's width and height
    fps_divisor: int = 1  # 1 frame in this many is admitted

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FULL = QualitySettings()


def check_ladder(ladder: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The ladder as a tuple, or a ValueError naming the unknown rung; it must start at `full`."""
    ladder = tuple(ladder)
    unknown = [name for name in ladder if name not in RUNG_EFFECTS]
    if unknown:
        raise ValueError(f"unknown quality rung(s) {', '.join(unknown)}; known: {', '.join(RUNG_EFFECTS)}")
    if not ladder or ladder[0] != "full":
        raise ValueError("the quality ladder must start with 'full'")
    if len(set(ladder)) != len(ladder):
        raise ValueError("the quality ladder names a rung twice")
    return ladder


def settings_at(ladder: tuple[str, ...], rung: int) -> QualitySettings:
    """The knobs at `ladder[rung]`: every rung's effect up to and including it, later ones winning."""
    effects: dict[str, Any] = {}
    for name in ladder[: rung + 1]:
        effects.update(RUNG_EFFECTS[name])
    return QualitySettings(rung=ladder[rung], **effects)


def effective_ladder(
    ladder: tuple[str, ...], *, felt: set[str] | frozenset[str], can_shed: bool, can_resize_output: bool, live: bool
) -> tuple[str, ...]:
    """The rungs that change something in this run, in order (`full` always stays). `felt`: the
    inference knobs some stage of the graph follows (`inference_every`: any inference stage)."""
    acts = {
        "inference_every": "inference_every" in felt,
        "inference_scale": "inference_scale" in felt,
        "precision": "precision" in felt,
        "shed": can_shed,
        "output_scale": can_resize_output,
        "fps_divisor": live,  # a file run that skipped frames would lose them from its output for good
    }
    return tuple(name for name in ladder if all(acts[knob] for knob in RUNG_EFFECTS[name]))
