"""Imports go one way: each part of the pipeline imports only from the parts beneath it.

The layers, from the bottom (a module may import from its own layer and the ones above it in
this list): what a run is described by, the frame and its device, I/O, the model manager, the
stage base, the stages, the graph, the frame scheduler, the executor, a job, and the ways in.
`kernels/` and `models/` import nothing from `pipeline/`, and `kernels/` nothing from
`models/`. Every module of the pipeline must be placed here, so a new module is placed on
purpose. `TYPE_CHECKING` imports count too: a type is a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Module-name prefixes by layer, bottom first; the longest matching prefix places a module.
LAYERS: list[tuple[str, ...]] = [
    ("pipeline.errors", "pipeline.progress", "pipeline.metrics", "pipeline.scheduling.ladder", "pipeline.config"),
    ("pipeline.ringbuffer", "pipeline.frames", "pipeline.annotation"),
    (
        "pipeline.device",
        "pipeline.device_profiles",
        "pipeline.gpu_health",
        "pipeline.pixels",
        "pipeline.scratch",
        "pipeline.side_work",
    ),
    ("pipeline.io",),
    ("pipeline.model_manager",),
    ("pipeline.stage",),
    ("pipeline.stages",),
    ("pipeline.registry", "pipeline.graph"),
    ("pipeline.scheduling",),
    ("pipeline.executor",),
    ("pipeline.job", "pipeline.cluster.resources"),
    ("pipeline.cli", "pipeline.webrtc", "pipeline.cluster"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(top: str) -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / top).rglob("*.py"))}


ALL = {**modules("pipeline"), **modules("kernels"), **modules("models")}


def layer(name: str) -> int:
    if name == "pipeline":  # the package's door: imports nothing (checked below)
        return 0
    best, rank = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    if rank is None:
        raise AssertionError(f"{name} is in no layer: place it in {__name__}.LAYERS")
    return rank


def imports(name: str) -> set[str]:
    """The project modules `name` imports, by full name (`from a import b` counts `a.b` when
    `b` is a module)."""
    path = ALL[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in ALL)
    return {target for target in found if target.split(".")[0] in {"pipeline", "kernels", "models"} and target in ALL}


@pytest.mark.parametrize("name", sorted(n for n in ALL if n.startswith("pipeline")))
def test_pipeline_imports_point_down(name):
    own = layer(name)
    upward = sorted(t for t in imports(name) if t.startswith("pipeline.") and layer(t) > own)
    assert not upward, f"{name} (layer {own}) imports from above it: {', '.join(upward)}"


@pytest.mark.parametrize("name", sorted(n for n in ALL if not n.startswith("pipeline")))
def test_kernels_and_models_stand_alone(name):
    forbidden = ("pipeline",) if name.startswith("models") else ("pipeline", "models")
    reached = sorted(t for t in imports(name) if t.split(".")[0] in forbidden)
    assert not reached, f"{name} imports {', '.join(reached)}"


def test_a_package_spanning_layers_imports_nothing_at_its_door():
    """Importing `pipeline.scheduling.ladder` runs `pipeline/scheduling/__init__.py`; if that
    imported the runner, the ladder's low place would be a fiction."""
    for name, path in ALL.items():
        if path.name != "__init__.py" or not name.startswith("pipeline"):
            continue
        layers = {layer(sub) for sub in ALL if sub.startswith(name + ".")}
        if len(layers) > 1:
            assert not imports(name), f"{name} holds modules of several layers and imports {imports(name)}"


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a stage importing the executor is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from pipeline.executor import Executor\nimport pipeline.scheduling.runner\n")
    monkeypatch.setitem(ALL, "pipeline.stages.bad", bad)
    assert imports("pipeline.stages.bad") == {"pipeline.executor", "pipeline.scheduling.runner"}
    with pytest.raises(AssertionError, match="imports from above it"):
        test_pipeline_imports_point_down("pipeline.stages.bad")
