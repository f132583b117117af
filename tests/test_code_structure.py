"""The rules that keep the code readable, checked on the source with `ast` (nothing is run):
modules fit in one sitting, functions in one screen, no import cycle, the pure layer grouped
into packages, and phase apps that never import each other (alignray.workflows.phases
resolves what one phase needs of another)."""
import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = ("alignray", "actors", "workflows", "cluster")
MAX_MODULE_LINES = 410
MAX_FUNCTION_LINES = 60
MAX_LOOSE_MODULES = 6  # alignray/*.py beside the packages
# The apps that compose others (the pipeline, the command) and the wiring every app shares.
COMPOSERS = {"pipeline", "cli", "common", "phases", "report"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] != "alignray":
        parts.insert(0, "alignray")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(path): (path, ast.parse(path.read_text(), filename=str(path)))
            for package in CODE for path in sorted((ROOT / package).rglob("*.py"))}


def top_level_imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """The project's modules imported when this one is (function bodies excluded)."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def test_modules_and_functions_stay_small():
    too_long = []
    for name, (path, tree) in sources().items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        too_long += [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in ast.walk(tree)
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not too_long, too_long


def test_no_import_cycle():
    modules = sources()
    graph = {name: top_level_imports(tree, set(modules)) - {name} for name, (_, tree) in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_pure_layer_is_grouped_into_packages():
    loose = sorted(p.name for p in (ROOT / "alignray").glob("*.py"))
    assert len(loose) <= MAX_LOOSE_MODULES, loose


def test_no_phase_app_imports_another():
    offenders = []
    for path in sorted((ROOT / "workflows").glob("*.py")):
        if path.stem in COMPOSERS or path.stem == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("alignray.workflows."):
                imported = node.module.split(".")[2]
                if imported not in {"common", "phases"}:
                    offenders.append(f"workflows/{path.name}:{node.lineno} imports {node.module}")
    assert not offenders, offenders


@pytest.mark.parametrize("name", ["alignray.tests", "alignray.benchmarks", "alignray.docs"])
def test_only_the_role_packages_import_under_alignray_in_a_checkout(name):
    assert importlib.import_module("alignray.actors.runtime")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(name)
