"""The stage table: built-in stages load when a graph names them, a stage of one's own is one
file named by its import path, and every wrong name is one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline import registry
from pipeline.config import parse_config
from pipeline.errors import ConfigError
from pipeline.graph import build_graph
from pipeline.registry import BUILT_IN, known_types, register_stage, stage_type, stage_types
from pipeline.stage import Stage


def test_importing_the_registry_or_the_stages_package_imports_no_stage():
    code = (
        "import sys, pipeline.registry, pipeline.stages, pipeline.graph;"
        "print(sorted(m for m in sys.modules if m.startswith('pipeline.stages.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_each_built_in_entry_is_the_stage_of_that_name():
    for name in BUILT_IN:
        assert stage_type(name).type_name == name
    assert set(stage_types()) >= set(BUILT_IN)


def test_a_stage_of_ones_own_is_named_by_its_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_stages.py").write_text(
        "from pipeline.stage import Stage\n\n"
        "class Shout(Stage):\n"
        "    type_name = 'shout'\n\n"
        "    async def process(self, frame):\n"
        "        return {'index': frame.index}\n"
        "\nnot_a_stage = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = build_graph(parse_config({"name": "own", "stages": [{"name": "loud", "type": "my_stages:Shout"}]}))
    assert graph.nodes["loud"].stage_type.__name__ == "Shout"
    with pytest.raises(ConfigError, match=r"stage 'x': key 'type': .* is not a Stage"):
        build_graph(parse_config({"name": "own", "stages": [{"name": "x", "type": "my_stages:not_a_stage"}]}))
    with pytest.raises(ConfigError, match="cannot import my_stages:Whisper"):
        stage_type("my_stages:Whisper")
    with pytest.raises(ConfigError, match="cannot import no_such_module:Stage"):
        stage_type("no_such_module:Stage")
    for malformed in (":Foo", ".x:Foo", "my_stages:", "my stages:Shout"):
        with pytest.raises(ConfigError, match="not an import path"):
            stage_type(malformed)
    (tmp_path / "broken_stages.py").write_text("raise RuntimeError('half-written')\n")
    with pytest.raises(ConfigError, match=r"cannot import broken_stages:X \(RuntimeError: half-written\)"):
        stage_type("broken_stages:X")


def test_a_stage_named_by_its_path_is_known_by_its_name_to_the_stages_after_it():
    from pipeline.graph import with_avatar_voice_returned

    config = parse_config(
        {
            "name": "paths",
            "stages": [
                {"name": "stats", "type": "pipeline.stages.frame_stats:FrameStats"},
                {"name": "level", "type": "audio_level"},
                {"name": "meters", "type": "meter_overlay", "after": ["stats", "level"]},
                {"name": "mic", "type": "pipeline.stages.voice.stage:Voice"},
            ],
        }
    )
    assert build_graph(config).nodes["meters"].inputs == {"frame_stats": "stats", "audio_level": "level"}
    assert with_avatar_voice_returned(config).stages[3].options["returns"] == "avatar"


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown stage type 'emotions' \\(known: audio_level, avatar"):
        stage_type("emotions")


def test_a_registered_type_is_found_by_name_and_may_not_take_a_built_in_name(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTERED", {})  # this test's types stay this test's

    class Counted(Stage):
        type_name = "counted_for_registry_test"

    class Impostor(Stage):
        type_name = "emotion"

    assert register_stage(Counted) is Counted
    assert register_stage(Counted) is Counted  # the same class again is fine
    assert stage_type("counted_for_registry_test") is Counted
    assert "counted_for_registry_test" in known_types()
    with pytest.raises(ValueError, match=r"'emotion' is already pipeline\.stages\.emotion\.stage:Emotion"):
        register_stage(Impostor)
    assert register_stage(stage_type("emotion")) is stage_type("emotion")  # the built-in itself: fine
