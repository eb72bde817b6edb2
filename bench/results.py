"""Bench results: record a bench's headline figures, and write `bench/RESULTS.md` from them.

Every bench prints, as its last line, one JSON object with its headline figures. Recording a
run keeps that object in `bench/results/<bench>.json` with the command, the date and the
machine it ran on; `RESULTS.md` is then written from those files alone, so it never says more
than a run measured, and a stale number is replaced by running its bench again.

    python bench/results.py record latency_under_load -- --loads 3 --seconds 6
    python bench/results.py write            # RESULTS.md from bench/results/*.json
    python bench/results.py check            # exit 1 when RESULTS.md is not what `write` makes
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"
HEADER = """# Bench results

Written by `python bench/results.py write` from `bench/results/*.json`; do not edit by hand.
Each section is the last recorded run of one bench: the command, when, on what machine, and
the figures it printed as its last line. To refresh one, run
`python bench/results.py record <bench> -- <its options>`; each bench says what it measures
(`python bench/<bench>.py --help`). Dated notes on past runs: `bench/NOTES.md`.
"""


def machine() -> dict[str, Any]:
    """What the figures depend on: processor, cores, memory, GPU, and the main libraries."""
    found: dict[str, Any] = {"os": f"{platform.system()} {platform.release()}", "python": platform.python_version()}
    try:
        model = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
        found["cpu"] = model.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        found["cpu"] = platform.processor() or platform.machine()
    found["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        found["memory_gb"] = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import torch

        found["torch"] = torch.__version__
        found["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        found["gpu"] = None
    return found


def last_json(output: str) -> dict[str, Any]:
    """The object on the last non-empty line of a bench's output."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        raise ValueError("the bench printed nothing")
    try:
        figures = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"the bench's last line is not JSON: {lines[-1][:120]!r}") from exc
    if not isinstance(figures, dict):
        raise ValueError("the bench's last line is not a JSON object")
    return figures


def record(bench: str, options: list[str]) -> Path:
    """Run `bench/<bench>.py options`, passing its output through, and keep its figures."""
    script = HERE / f"{bench}.py"
    if not script.is_file():
        raise SystemExit(f"no bench {bench!r} (bench/{bench}.py)")
    run = subprocess.run([sys.executable, str(script), *options], stdout=subprocess.PIPE, text=True)
    sys.stdout.write(run.stdout)
    if run.returncode != 0:
        raise SystemExit(f"bench {bench} failed (exit {run.returncode}); nothing recorded")
    try:
        figures = last_json(run.stdout)
    except ValueError as exc:
        raise SystemExit(f"bench {bench}: {exc}; nothing recorded") from None
    entry = {
        "bench": bench,
        "command": " ".join(["python", f"bench/{bench}.py", *options]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "figures": figures,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{bench}.json"
    path.write_text(json.dumps(entry, indent=1) + "\n")
    return path


def flatten(value: Any, prefix: str = "") -> tuple[list[tuple[str, Any]], list[tuple[str, list[dict[str, Any]]]]]:
    """Nested figures as (dotted key, value) rows, and each list of records (a bench's runs) on
    its own, to be a table with a column per field."""
    if isinstance(value, dict):
        rows: list[tuple[str, Any]] = []
        tables: list[tuple[str, list[dict[str, Any]]]] = []
        for key, inner in value.items():
            more_rows, more_tables = flatten(inner, f"{prefix}.{key}" if prefix else str(key))
            rows += more_rows
            tables += more_tables
        return rows, tables
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return [], [(prefix, value)]
    return [(prefix, value)], []


def _cell(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, list | bool) or value is None else str(value)
    return text.replace("|", "\\|")


def _table(records: list[dict[str, Any]]) -> str:
    flat = [dict(flatten(record)[0]) for record in records]
    columns = list(dict.fromkeys(key for row in flat for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(column, "")) for column in columns) + " |" for row in flat]
    return "\n".join(lines) + "\n"


def render(entries: list[dict[str, Any]]) -> str:
    parts = [HEADER]
    for entry in sorted(entries, key=lambda e: e["bench"]):
        m = entry["machine"]
        gpu = m.get("gpu") or "no GPU"
        parts.append(
            f"\n## {entry['bench']}\n\n`{entry['command']}`, {entry['date']}.\n"
            f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb', '?')} GB, {gpu}; "
            f"{m.get('os')}, Python {m.get('python')}, torch {m.get('torch', '?')}.\n"
        )
        rows, tables = flatten(entry["figures"])
        if rows:
            parts.append("\n| figure | value |\n|---|---|\n")
            parts.append("".join(f"| {key} | {_cell(value)} |\n" for key, value in rows))
        for key, records in tables:
            parts.append(f"\n{key}:\n\n" + _table(records))
    return "".join(parts)


def entries() -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(RESULTS_DIR.glob("*.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    run = verbs.add_parser("record", help="run a bench and keep its figures in bench/results/<bench>.json")
    run.add_argument("bench", help="a script in bench/, without .py, e.g. latency_under_load")
    run.add_argument("options", nargs=argparse.REMAINDER, help="the bench's own options, after --")
    verbs.add_parser("write", help="write bench/RESULTS.md from bench/results/*.json")
    verbs.add_parser("check", help="exit 1 when bench/RESULTS.md is not what `write` makes")
    args = parser.parse_args()
    if args.verb == "record":
        options = args.options[1:] if args.options[:1] == ["--"] else args.options
        print(f"recorded {record(args.bench, options).relative_to(HERE.parent)}", file=sys.stderr)
        RESULTS_MD.write_text(render(entries()))
    elif args.verb == "write":
        RESULTS_MD.write_text(render(entries()))
    elif RESULTS_MD.read_text() != render(entries()):
        raise SystemExit("bench/RESULTS.md is out of date: run python bench/results.py write")


if __name__ == "__main__":
    main()
