"""The graph: joins carry the right annotations to the right frame, order holds, failures stay put."""

from __future__ import annotations

import logging

import pytest
from conftest import IndexSource, RecordingSink
from stage_kit import graph_of

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.executor import Pipeline
from pipeline.graph import build_graph


def run_graph(run, stages, count=200, **config):
    sink = RecordingSink()
    pipeline = Pipeline(graph_of(stages, **config), IndexSource(count), sink)
    report = run(pipeline.run())
    assert pipeline.ring.in_use == 0
    return sink, report


def test_fan_out_and_fan_in_join_each_frame_with_its_own_annotations(run):
    stages = [
        {"name": "left", "type": "stamp"},
        {"name": "slow", "type": "jitter", "options": {"max_ms": 1.0}, "workers": 4},
        {"name": "right", "type": "stamp", "after": ["slow"]},
        {"name": "both", "type": "join", "after": ["left", "right"]},
    ]
    sink, _ = run_graph(run, stages)
    assert sink.indices == list(range(200))
    for record in sink.records:
        joined = record["annotations"]["both"]
        assert joined["left"]["index"] == joined["right"]["index"] == record["index"]
        assert joined["left"]["stamp"] == record["index"] % 256


def test_sink_gets_frames_in_source_order_whatever_order_stages_finish(run):
    stages = [{"name": "shuffle", "type": "jitter", "options": {"max_ms": 3.0}, "workers": 6}]
    sink, report = run_graph(run, stages, count=150)
    assert sink.indices == list(range(150))
    assert all(r["annotations"]["shuffle"]["index"] == r["index"] for r in sink.records)
    assert report["queues"]["shuffle"]["max_depth"] >= 1


def test_failing_stage_is_isolated_and_frame_continues_marked_missing(run):
    stages = [
        {"name": "flaky", "type": "flaky", "options": {"fail_indices": [3, 7]}},
        {"name": "after_flaky", "type": "stamp", "after": ["flaky"]},
    ]
    sink, report = run_graph(run, stages, count=20)
    assert sink.indices == list(range(20))
    for record in sink.records:
        annotation = record["annotations"]["flaky"]
        if record["index"] in (3, 7):
            assert annotation["missing"] is True and "cannot handle frame" in annotation["reason"]
        else:
            assert annotation == {"ok": record["index"]}
        assert record["annotations"]["after_flaky"]["index"] == record["index"]
    assert report["stages"]["flaky"]["errors"] == 2
    assert report["stages"]["flaky"]["disabled"] is None


def test_stage_is_disabled_after_consecutive_failures_with_one_log_line(run, caplog):
    stages = [{"name": "broken", "type": "boom"}, {"name": "fine", "type": "stamp"}]
    with caplog.at_level(logging.WARNING):
        sink, report = run_graph(run, stages, count=30, max_consecutive_failures=4)
    assert report["stages"]["broken"]["errors"] == 4
    assert "4 consecutive failures" in report["stages"]["broken"]["disabled"]
    assert all(r["annotations"]["broken"]["missing"] for r in sink.records)
    assert sink.records[-1]["annotations"]["broken"]["reason"] == "disabled"
    assert all(r["annotations"]["fine"]["index"] == r["index"] for r in sink.records)
    disabled_lines = [r for r in caplog.records if "disabled" in r.getMessage()]
    assert len(disabled_lines) == 1


def test_stage_whose_setup_fails_is_disabled_not_fatal(run):
    sink, report = run_graph(run, [{"name": "model", "type": "bad_setup"}, {"name": "ok", "type": "stamp"}], count=5)
    assert "setup failed" in report["stages"]["model"]["disabled"]
    assert sink.indices == list(range(5))


def test_empty_graph_passes_frames_straight_to_the_sink(run):
    sink, report = run_graph(run, [], count=12)
    assert sink.indices == list(range(12)) and report["frames"]["out"] == 12


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"name": "a", "type": "nope"}], "stage 'a': key 'type': unknown stage type 'nope'"),
        ([{"name": "a", "type": "stamp", "after": ["ghost"]}], "stage 'a': key 'after': 'ghost' is not a stage"),
        ([{"name": "a", "type": "stamp", "after": ["a"]}], "stage 'a': key 'after': a stage cannot run after itself"),
        (
            [
                {"name": "a", "type": "stamp", "after": ["c"]},
                {"name": "b", "type": "stamp", "after": ["a"]},
                {"name": "c", "type": "stamp", "after": ["b"]},
            ],
            "cycle in graph: ",
        ),
        ([{"name": "a", "type": "stamp"}, {"name": "a", "type": "stamp"}], "stage 'a': key 'name': used by more"),
        ([{"name": "a", "type": "frame_stats", "options": {"downscale": "big"}}], "stage 'a': option 'downscale': "),
        (
            [{"name": "a", "type": "frame_stats", "options": {"colour": 1}}],
            "stage 'a': option 'colour': unknown option",
        ),
        ([{"name": "m", "type": "meter_overlay"}], "stage 'm': input 'frame_stats': no upstream stage of type"),
        ([{"name": "a", "type": "stamp", "workers": 0}], "stage 'a', key 'workers': Input should be greater than"),
        ([{"name": "a", "type": "stamp", "colour": 1}], "stage 'a', key 'colour': unknown key"),
        ([{"type": "stamp"}], "stages[0], key 'name': missing key"),
    ],
)
def test_config_errors_name_the_node_and_the_key(stages, message):
    with pytest.raises(ConfigError) as caught:
        graph_of(stages)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text


def test_cycle_message_shows_the_loop():
    with pytest.raises(ConfigError, match=r"cycle in graph: (a -> b -> a|b -> a -> b)"):
        graph_of([{"name": "a", "type": "stamp", "after": ["b"]}, {"name": "b", "type": "stamp", "after": ["a"]}])


def test_ambiguous_input_port_is_an_error():
    stages = [
        {"name": "s1", "type": "frame_stats"},
        {"name": "s2", "type": "frame_stats"},
        {"name": "lvl", "type": "audio_level"},
        {"name": "m", "type": "meter_overlay", "after": ["s1", "s2", "lvl"]},
    ]
    with pytest.raises(ConfigError, match="stage 'm': input 'frame_stats': several upstream stages"):
        graph_of(stages)


def test_a_stage_is_served_at_the_priority_of_the_most_important_stage_waiting_for_it():
    served = build_graph(load_config("default")).served_priorities()
    assert served["frame_stats"] == served["avatar"] == 6  # the avatar waits for the frame statistics
    assert served["emotion"] == served["voice"] == 6
    assert served["audio_level"] == served["meters"] == 3  # the meters wait for the sound levels
    assert served["context"] == 1  # nothing waits for it: its own


def test_a_finished_stage_hands_its_frame_to_its_most_important_child_first(run):
    stages = [
        {"name": "root", "type": "stamp"},
        {"name": "minor", "type": "stamp", "after": ["root"], "priority": 1},
        {"name": "major", "type": "stamp", "after": ["root"], "priority": 6},
        {"name": "middle", "type": "stamp", "after": ["root"], "priority": 3},
    ]
    pipeline = Pipeline(graph_of(stages), IndexSource(3), RecordingSink())
    run(pipeline.run())
    assert [child.node.name for child in pipeline._running["root"].children] == ["major", "middle", "minor"]


def test_a_stages_lane_is_niced_by_the_priority_it_is_served_at(run):
    stages = [
        {"name": "feeds", "type": "stamp", "priority": 1},
        {"name": "needs", "type": "stamp", "after": ["feeds"], "priority": 6},
        {"name": "aside", "type": "stamp", "priority": 1},
    ]
    pipeline = Pipeline(graph_of(stages), IndexSource(3), RecordingSink())
    run(pipeline.run())
    nice = {name: running.lane.cpu_nice for name, running in pipeline._running.items()}
    assert nice["feeds"] == nice["needs"] == 0  # served as the stage that waits for it
    assert nice["aside"] > 0  # nothing important waits for it: its own priority


class _Counter:
    def __init__(self) -> None:
        self.calls = 0


def _service_types():
    from stage_kit import all_types

    from pipeline.stage import Stage

    class Offers(Stage):
        type_name = "offers"
        offers = ("count",)

        def setup(self, ctx):
            super().setup(ctx)
            self.counter = _Counter()
            ctx.offer("count", self.counter)

        async def process(self, frame):
            return None

    class Uses(Stage):
        type_name = "uses"
        uses = ("count",)

        async def process(self, frame):
            counter = self.ctx.service("count")
            counter.calls += 1
            return {"calls": counter.calls}

    return {**all_types(), "offers": Offers, "uses": Uses}


def test_a_stage_reaches_the_service_it_declared_wherever_its_provider_sits(run):
    from pipeline.config import parse_config

    types = _service_types()
    # The user runs before the provider in the graph: services are not annotations, so no edge is needed.
    stages = [{"name": "user", "type": "uses"}, {"name": "giver", "type": "offers", "after": ["user"]}]
    graph = build_graph(parse_config({"name": "t", "stages": stages}), types)
    assert graph.nodes["user"].services == {"count": "giver"}
    sink = RecordingSink()
    pipeline = Pipeline(graph, IndexSource(10), sink)
    run(pipeline.run())
    assert [r["annotations"]["user"]["calls"] for r in sink.records] == list(range(1, 11))
    with pytest.raises(KeyError, match="not a service this stage declared"):
        pipeline._running["giver"].runner.stage.ctx.service("count")  # offered, not declared as used


def test_a_missing_or_doubled_provider_of_a_service_fails_at_build_naming_the_stage():
    from pipeline.config import parse_config

    types = _service_types()
    with pytest.raises(ConfigError, match="stage 'user': uses 'count', which no stage in the graph offers"):
        build_graph(parse_config({"name": "t", "stages": [{"name": "user", "type": "uses"}]}), types)
    stages = [{"name": "user", "type": "uses"}, {"name": "a", "type": "offers"}, {"name": "b", "type": "offers"}]
    with pytest.raises(ConfigError, match=r"stage 'user': uses 'count', offered by several stages \(a, b\)"):
        build_graph(parse_config({"name": "t", "stages": stages}), types)
    config = load_config("default")
    assert build_graph(config).nodes["context"].services == {"speech": "voice"}
