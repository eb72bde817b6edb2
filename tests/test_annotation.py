"""Each stage's annotation has the shape its `Annotation` declares, and the analytics writer
writes JSON only: a stage that leaves something else is isolated, not stringified."""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np
import pytest
import torch
from media_kit import make_face_clip
from pydantic import ValidationError
from stage_kit import all_types
from voice_kit import placed, speech_clip, spoken

from pipeline.annotation import Annotation, check
from pipeline.config import load_config, parse_config
from pipeline.executor import Pipeline
from pipeline.frames import Frame
from pipeline.graph import build_graph
from pipeline.io.analytics import AnalyticsSink
from pipeline.io.media import MediaSource
from pipeline.io.sinks import NullSink
from pipeline.stage import Stage


class Kept(NullSink):
    """Keeps each frame's annotations as the stages left them, before any serialising."""

    def __init__(self) -> None:
        super().__init__()
        self.annotations: list[dict] = []

    async def write(self, frame: Frame) -> None:
        self.annotations.append({"frame": frame.index, **frame.annotations})
        await super().write(frame)


def records_of(config_name: str, clip, tmp_path) -> tuple[list[dict], dict[str, type], AnalyticsSink]:
    """The analytics records of a run, and (checked here against the declared shapes) the
    annotations as the stages left them in memory: what the stages after them read, where a
    tuple is not a list and an int key is not a string."""
    config = load_config(config_name).model_copy(update={"quality": parse_config({}).quality})
    graph = build_graph(config)
    kept = Kept()
    sink = AnalyticsSink(kept, tmp_path / f"{config_name}.jsonl")
    asyncio.run(Pipeline(graph, MediaSource(clip), sink).run())
    shapes = {name: node.stage_type.Annotation for name, node in graph.nodes.items()}
    assert len(kept.annotations) > 0
    assert_shapes(kept.annotations, shapes)
    return [json.loads(line) for line in sink.path.read_text().splitlines()], shapes, sink


def assert_shapes(records: list[dict], shapes: dict[str, type]) -> None:
    for record in records:
        for name, shape in shapes.items():
            if name in record:
                try:
                    check(shape, record[name])
                except ValidationError as exc:
                    pytest.fail(f"frame {record['frame']}: {name}: {exc}")


def test_the_default_graph_hearing_speech_gives_the_declared_shapes(tmp_path):
    speech, _, _ = spoken("Hello, how are you today?")
    clip = speech_clip(tmp_path / "talk.mp4", placed(speech, 0.5, 3.5))
    records, shapes, sink = records_of("default", clip, tmp_path)
    assert sink.rejected == {}
    assert_shapes(records, shapes)
    seen = {name for record in records for name in shapes if name in record and not record[name].get("missing")}
    assert seen == set(shapes)
    said = [e for r in records for e in r["voice"]["events"] if e["type"] == "user_said"]
    assert len(said) == 1 and any(r["voice"]["text"] for r in records)  # the answer was spoken: text was a str


def test_the_annotated_graph_on_a_face_gives_the_declared_shapes(tmp_path):
    records, shapes, sink = records_of("annotated", make_face_clip(tmp_path / "face.mp4", frames=20), tmp_path)
    assert sink.rejected == {}
    assert_shapes(records, shapes)
    assert any(record["emotion"]["faces"] for record in records)


def test_a_shape_check_names_what_does_not_match():
    from pipeline.stages.emotion.stage import EmotionAnnotation

    face = {
        "track": 1,
        "box": [1.0, 2.0, 3.0, 4.0],
        "crop": [0.0, 0.0, 5.0, 5.0],
        "landmarks": [[1.0, 1.0]] * 5,
        "score": 0.9,
        "probs": None,
        "label": None,
        "detected": True,
    }
    check(EmotionAnnotation, {"faces": [face]})
    check(EmotionAnnotation, {"faces": [face], "held": True})
    check(EmotionAnnotation, {"missing": True, "reason": "shed"})
    for bad, where in [
        ({"faces": [{**face, "track": "1"}]}, "faces.0.track"),
        ({"faces": [{**face, "extra": 1}]}, "faces.0.extra"),
        ({"faces": [face], "count": 1}, "count"),
        ({}, "faces"),
    ]:
        with pytest.raises(ValidationError, match=where.replace(".", r"\.")):
            check(EmotionAnnotation, bad)


def test_every_built_in_stage_declares_its_annotation():
    for name, stage_type in all_types().items():
        if stage_type.__module__.startswith("pipeline.stages") and name != "passthrough":
            assert stage_type.Annotation is not Annotation, f"{name} declares no Annotation"


class LeavesNumpy(Stage):
    type_name = "leaves_numpy"

    async def process(self, frame: Frame) -> dict:
        return {"value": np.float32(0.5), "tensor": torch.ones(2)}


class LeavesNumbers(Stage):
    type_name = "leaves_numbers"

    async def process(self, frame: Frame) -> dict:
        return {"value": 0.5, "nan": float("nan") if frame.index == 2 else 0.0}


def test_a_value_that_is_not_json_isolates_its_stage_and_the_run_goes_on(tmp_path, caplog):
    config = parse_config(
        {
            "name": "strict",
            "stages": [{"name": "numpy", "type": "leaves_numpy"}, {"name": "numbers", "type": "leaves_numbers"}],
        }
    )
    graph = build_graph(config, {"leaves_numpy": LeavesNumpy, "leaves_numbers": LeavesNumbers})
    sink = AnalyticsSink(NullSink(), tmp_path / "strict.jsonl")
    with caplog.at_level(logging.WARNING, "pipeline.io.analytics"):
        asyncio.run(Pipeline(graph, MediaSource(make_face_clip(tmp_path / "f.mp4", frames=4)), sink).run())
    records = [json.loads(line) for line in sink.path.read_text().splitlines()]
    assert len(records) == 4
    assert all(r["numpy"]["missing"] and "not JSON" in r["numpy"]["reason"] for r in records)
    assert [r["numbers"].get("missing", False) for r in records] == [False, False, True, False]  # NaN is not JSON
    assert records[0]["numbers"] == {"value": 0.5, "nan": 0.0}
    assert sink.rejected == {"numpy": 4, "numbers": 1}
    assert sum("'numpy'" in message for message in caplog.messages) == 1  # named once, not per frame
