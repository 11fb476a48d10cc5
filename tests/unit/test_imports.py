"""The structure drawn from the imports (lazy ones included): no circle among the project's modules, and the
orchestration (pipeline/) reaches only the light stage modules, none of which imports torch at module level."""

from __future__ import annotations

import ast

from tests.conftest import REPO

LIGHT = {
    "stages.config",
    "stages.engines",
    "stages.store",
    "stages.layout",
    "stages.secrets",
    "stages.stage_cli",
    "stages.provenance",  # the flow asks it whether a training arm is finished before starting the stage
    "stages.checkpointing",
}


def _graph(lazy: bool = True) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in [*REPO.glob("stages/*.py"), *REPO.glob("pipeline/*.py")]:
        name = path.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
        tree = ast.parse(path.read_text())
        nodes = ast.walk(tree) if lazy else tree.body
        deps: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("stages", "pipeline"):
                if node.module in ("stages", "pipeline"):
                    deps |= {f"{node.module}.{a.name}" for a in node.names}
                else:
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] in ("stages", "pipeline", "torch")}
        graph[name] = deps
    return graph


def test_no_module_imports_itself_back_through_others():
    graph = _graph()
    cycles: list[str] = []
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> None:  # depth first; a module met again on the current path is a circle
        for dep in sorted(graph.get(node, ())):
            if dep in path:
                cycles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep in graph and dep not in done:
                walk(dep, [*path, dep])
        done.add(node)

    for module in sorted(graph):
        if module not in done:
            walk(module, [module])
    assert not cycles, sorted(set(cycles))[:5]


def test_the_orchestration_imports_only_the_light_stage_modules_which_load_no_torch():
    graph = _graph()
    used = {d for m, deps in graph.items() if m.startswith("pipeline.") for d in deps if d.startswith("stages.")}
    assert used <= LIGHT, sorted(used - LIGHT)
    top = _graph(lazy=False)
    reach, todo = set(), [m for m in LIGHT]
    while todo:  # everything the light modules import at module level
        m = todo.pop()
        if m not in reach:
            reach.add(m)
            todo += [d for d in top.get(m, ()) if d.startswith("stages.")]
    assert not [m for m in reach if "torch" in top.get(m, set())], sorted(reach)
