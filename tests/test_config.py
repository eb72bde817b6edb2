"""Configs: the shipped ones build, file errors are one line naming the place, and the
scheduler's defaults come from the config (the controller reads them, not the reverse)."""

from __future__ import annotations

import pytest

from pipeline.config import CLIMB_AFTER_S, CONFIG_DIR, CONTROL_PERIOD_S, load_config, parse_config
from pipeline.errors import ConfigError
from pipeline.graph import build_graph
from pipeline.scheduling.ladder import DEFAULT_LADDER


def test_shipped_configs_build():
    for name in ("default", "passthrough"):
        build_graph(load_config(name))


def test_every_shipped_graph_config_builds():
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        build_graph(load_config(path))


def test_config_file_errors(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("stages: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+"):
        load_config(bad_yaml)
    unknown_top = tmp_path / "top.yaml"
    unknown_top.write_text("stagez: []\n")
    with pytest.raises(ConfigError, match="key 'stagez': unknown key"):
        load_config(unknown_top)
    with pytest.raises(ConfigError, match="config 'no-such-graph' not found"):
        load_config("no-such-graph")


def test_the_quality_section_defaults_to_the_controllers_tuning():
    quality = parse_config({"name": "bare", "stages": []}).quality
    assert quality.ladder == DEFAULT_LADDER
    assert quality.control_period_s == CONTROL_PERIOD_S and quality.climb_after_s == CLIMB_AFTER_S


def test_a_ladder_with_an_unknown_rung_is_one_line():
    with pytest.raises(ConfigError, match="unknown quality rung"):
        parse_config({"name": "bad", "quality": {"ladder": ["full", "faster"]}, "stages": []})
