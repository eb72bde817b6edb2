"""The docs' worked example runs: the stage in docs/writing-a-stage.md, its test, and its graph."""

from __future__ import annotations

import asyncio
import json
import re
import runpy
import sys
from pathlib import Path

import yaml
from media_kit import make_face_clip

from pipeline.config import parse_config
from pipeline.executor import Pipeline
from pipeline.graph import build_graph
from pipeline.io.analytics import AnalyticsSink
from pipeline.io.media import MediaSource
from pipeline.io.sinks import NullSink

DOC = Path(__file__).resolve().parent.parent / "docs" / "writing-a-stage.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_worked_example_stage_passes_its_own_test_and_runs_in_a_graph(tmp_path, monkeypatch):
    stage_code, test_code = blocks("python")
    (tmp_path / "motion_alarm.py").write_text(stage_code)
    (tmp_path / "motion_alarm_test.py").write_text(test_code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "motion_alarm", raising=False)
    runpy.run_path(str(tmp_path / "motion_alarm_test.py"))  # its asserts hold

    (config,) = blocks("yaml")
    graph = build_graph(parse_config(yaml.safe_load(config)))
    sink = AnalyticsSink(NullSink(), tmp_path / "motion.jsonl")
    asyncio.run(Pipeline(graph, MediaSource(make_face_clip(tmp_path / "face.mp4", frames=8)), sink).run())
    records = [json.loads(line) for line in sink.path.read_text().splitlines()]
    assert len(records) == 8 and sink.rejected == {}
    assert all(isinstance(record["alarm"]["moving"], bool) for record in records)
