"""The stage graph: built from a checked config into a DAG, with every wiring error found up front.

Checks, in order, each failing with the node and the key named: duplicate names, unknown stage
types, `after` naming no stage, cycles, options the stage type does not accept, and input ports
(stage types a stage reads) with no upstream stage to feed them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError

from pipeline.config import GraphConfig, StageSpec
from pipeline.errors import ConfigError
from pipeline.registry import stage_type
from pipeline.stage import Stage, StageOptions


@dataclass
class Node:
    """One stage in the graph, with its edges resolved."""

    spec: StageSpec
    stage_type: type[Stage]
    options: StageOptions
    parents: tuple[str, ...] = ()
    children: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # input port (stage type) → upstream node
    services: dict[str, str] = field(default_factory=dict)  # service used → the node that offers it

    @property
    def name(self) -> str:
        return self.spec.name

    def instantiate(self) -> Stage:
        return self.stage_type(self.name, priority=self.spec.priority, options=self.options)


@dataclass
class Graph:
    """Nodes in topological order, so every node comes after the nodes it waits for."""

    config: GraphConfig
    nodes: dict[str, Node]

    @property
    def roots(self) -> list[Node]:
        return [node for node in self.nodes.values() if not node.parents]

    @property
    def leaves(self) -> list[Node]:
        return [node for node in self.nodes.values() if not node.children]

    def served_priorities(self) -> dict[str, int]:
        """Each node's priority as its lane should be served: its own, or that of the most important
        stage that runs after it, if higher. A frame's avatar (6) waits for its frame statistics (2):
        serving those at 2 would make the avatar wait behind work less important than it."""
        served: dict[str, int] = {}
        for node in reversed(self.nodes.values()):  # children before their parents
            served[node.name] = max([node.spec.priority, *(served[child] for child in node.children)])
        return served


def _find_cycle(remaining: dict[str, list[str]]) -> list[str]:
    """A cycle among nodes that a topological sort could not place, as a path a → … → a."""
    start = next(iter(remaining))
    path: list[str] = []
    seen: dict[str, int] = {}
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(parent for parent in remaining[node] if parent in remaining)
    cycle = [*path[seen[node] :], node]
    return list(reversed(cycle))


def _topological_order(specs: dict[str, StageSpec]) -> list[str]:
    waiting = {name: len(spec.after) for name, spec in specs.items()}
    children: dict[str, list[str]] = {name: [] for name in specs}
    for name, spec in specs.items():
        for parent in spec.after:
            children[parent].append(name)
    ready = [name for name, count in waiting.items() if count == 0]
    order: list[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for child in children[name]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if len(order) != len(specs):
        remaining = {name: specs[name].after for name in specs if name not in order}
        raise ConfigError(f"cycle in graph: {' -> '.join(_find_cycle(remaining))}")
    return order


def _ancestors(name: str, specs: Mapping[str, StageSpec]) -> list[str]:
    """Upstream nodes, nearest first."""
    found: list[str] = []
    frontier = list(specs[name].after)
    while frontier:
        node = frontier.pop(0)
        if node not in found:
            found.append(node)
            frontier.extend(specs[node].after)
    return found


def build_graph(config: GraphConfig, types: Mapping[str, type[Stage]] | None = None) -> Graph:
    """Check the wiring and options of `config` and return the graph, or raise ConfigError.
    `types`: stage types to find by name before the registry's (`pipeline.registry`)."""
    extra = types or {}
    specs: dict[str, StageSpec] = {}
    for spec in config.stages:
        if spec.name in specs:
            raise ConfigError(f"stage {spec.name!r}: key 'name': used by more than one stage")
        specs[spec.name] = spec

    found: dict[str, type[Stage]] = {}
    for spec in specs.values():
        try:
            found[spec.name] = extra[spec.type] if spec.type in extra else stage_type(spec.type)
        except ConfigError as exc:
            raise ConfigError(f"stage {spec.name!r}: key 'type': {exc}") from None
        for parent in spec.after:
            if parent == spec.name:
                raise ConfigError(f"stage {spec.name!r}: key 'after': a stage cannot run after itself")
            if parent not in specs:
                raise ConfigError(f"stage {spec.name!r}: key 'after': {parent!r} is not a stage in this graph")
        if len(set(spec.after)) != len(spec.after):
            raise ConfigError(f"stage {spec.name!r}: key 'after': lists a stage twice")

    order = _topological_order(specs)

    nodes: dict[str, Node] = {}
    for name in order:
        spec = specs[name]
        stage_class = found[name]
        try:
            options = stage_class.Options.model_validate(spec.options)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(part) for part in first["loc"]) or "options"
            message = "unknown option" if first["type"] == "extra_forbidden" else first["msg"]
            raise ConfigError(f"stage {name!r}: option {key!r}: {message}") from None
        inputs: dict[str, str] = {}
        upstream = _ancestors(name, specs)
        for port in stage_class.inputs:
            feeding = [node for node in upstream if port in (specs[node].type, found[node].type_name)]
            if not feeding:
                raise ConfigError(
                    f"stage {name!r}: input {port!r}: no upstream stage of type {port!r} (list one in 'after')"
                )
            if len(feeding) > 1:
                raise ConfigError(
                    f"stage {name!r}: input {port!r}: several upstream stages of that type ({', '.join(feeding)})"
                )
            inputs[port] = feeding[0]
        nodes[name] = Node(spec=spec, stage_type=stage_class, options=options, parents=tuple(spec.after), inputs=inputs)

    for node in nodes.values():
        for parent in node.parents:
            nodes[parent].children.append(node.name)
        node.services = _providers(node, nodes)
    return Graph(config=config, nodes=nodes)


def _providers(node: Node, nodes: Mapping[str, Node]) -> dict[str, str]:
    """For each service `node`'s stage uses, the one node in the graph that offers it."""
    found = {}
    for service in node.stage_type.uses:
        offering = [other.name for other in nodes.values() if service in other.stage_type.offers]
        if not offering:
            raise ConfigError(f"stage {node.name!r}: uses {service!r}, which no stage in the graph offers")
        if len(offering) > 1:
            raise ConfigError(
                f"stage {node.name!r}: uses {service!r}, offered by several stages ({', '.join(offering)})"
            )
        found[service] = offering[0]
    return found


def _type_name(kind: str) -> str:
    """The `type_name` of the stage class a config's `type` names (the name itself when it names
    none: `build_graph` reports that), so a stage given by import path is known by its name."""
    try:
        return stage_type(kind).type_name
    except ConfigError:
        return kind


def with_lines_to_say(config: GraphConfig, lines: list[str]) -> GraphConfig:
    """`config` with `lines` added to what each voice stage says; an error if the graph has none."""
    stages = []
    found = False
    for spec in config.stages:
        if _type_name(spec.type) == "voice":
            found = True
            said = list(spec.options.get("say", ())) + list(lines)
            spec = spec.model_copy(update={"options": {**spec.options, "say": said}})
        stages.append(spec)
    if not found:
        raise ConfigError(f"--say: graph {config.name!r} has no voice stage to speak with")
    return config.model_copy(update={"stages": stages})


def with_avatar_voice_returned(config: GraphConfig) -> GraphConfig:
    """`config` with every voice stage handing on the avatar's voice alone (`returns: avatar`),
    unless the graph says otherwise: a browser page plays the returned sound, and the user must
    not hear themselves echoed."""
    stages = [
        spec.model_copy(update={"options": {"returns": "avatar", **spec.options}})
        if _type_name(spec.type) == "voice"
        else spec
        for spec in config.stages
    ]
    return config.model_copy(update={"stages": stages})
