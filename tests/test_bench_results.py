"""bench/RESULTS.md is written from the recorded runs only, and says on what machine."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
spec = importlib.util.spec_from_file_location("bench_results", BENCH / "results.py")
results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results)


def test_results_md_is_what_the_recorded_runs_make():
    """Edit the JSON by running a bench (`python bench/results.py record …`), never RESULTS.md."""
    assert results.entries(), "no recorded bench runs in bench/results/"
    assert (BENCH / "RESULTS.md").read_text() == results.render(results.entries())


def test_a_bench_section_names_its_command_date_machine_and_figures():
    entry = {
        "bench": "transcode",
        "command": "python bench/transcode.py --repeats 3",
        "date": "2026-12-04 22:00 UTC",
        "machine": {"cpu": "Some CPU", "cores": 2, "memory_gb": 7.8, "gpu": None, "os": "Linux", "python": "3.11"},
        "figures": {"ratio": 0.96, "runs": {"ours": [300, 310]}, "rows": [{"size": "640x480", "ms": 4.0}]},
    }
    text = results.render([entry])
    assert "## transcode" in text and "`python bench/transcode.py --repeats 3`, 2026-12-04 22:00 UTC" in text
    assert "Some CPU, 2 cores, 7.8 GB, no GPU" in text
    assert "| ratio | 0.96 |" in text and "| runs.ours | [300, 310] |" in text
    assert "rows:\n\n| size | ms |\n|---|---|\n| 640x480 | 4.0 |\n" in text  # a list of records is a table


def test_only_a_json_object_on_the_last_line_is_recorded():
    assert results.last_json('table\n\n{"a": 1}\n\n') == {"a": 1}
    for bad in ["", "table\nnot json", "[1, 2]"]:
        with pytest.raises(ValueError):
            results.last_json(bad)


def test_every_recorded_run_names_a_bench_that_exists():
    for entry in results.entries():
        assert (BENCH / f"{entry['bench']}.py").is_file(), entry["bench"]
        assert entry["machine"]["cores"] and json.dumps(entry["figures"])
