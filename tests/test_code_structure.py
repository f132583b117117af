"""The rules that keep the code readable, checked on the source with `ast` (nothing is run):
modules fit in one sitting, functions in one screen, no import cycle, the pure layer grouped
into packages, phase apps that never import each other (alignray.workflows.phases resolves
what one phase needs of another), and nothing below the apps reading a Hydra config."""
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


def python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


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


# ----------------------------------------------------------------------------- typed configuration
HYDRA_NAMES = {"DictConfig", "OmegaConf", "ListConfig"}
# The one place an app's composed config is read as a Hydra node and turned into the
# dataclasses of alignray.config (start_app), plus composing it without a command line.
CONVERSION = {("workflows/common.py", "start_app"), ("workflows/common.py", "compose_app_config")}


def hydra_uses(path: Path) -> list[tuple[int, str | None, bool]]:
    """Every mention of a Hydra config type or an omegaconf/hydra import in ``path``: its line,
    the function it is in (None: module level), and whether it only annotates a parameter of
    a function named ``main`` (a Hydra entry point receives the composed node)."""
    tree = ast.parse(path.read_text())
    uses = []

    def visit(node: ast.AST, function: str | None, in_main_signature: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for arg in [*node.args.args, *node.args.kwonlyargs]:
                if arg.annotation is not None:
                    visit(arg.annotation, node.name, node.name == "main")
            for child in [*node.body, *node.decorator_list, *([node.returns] if node.returns else [])]:
                visit(child, node.name, False)
            return
        if isinstance(node, ast.Name) and node.id in HYDRA_NAMES:
            uses.append((node.lineno, function, in_main_signature))
        elif isinstance(node, ast.Attribute) and node.attr in HYDRA_NAMES:
            uses.append((node.lineno, function, in_main_signature))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("omegaconf",):
            uses.append((node.lineno, function, "import"))
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "omegaconf" for a in node.names):
            uses.append((node.lineno, function, "import"))
        for child in ast.iter_child_nodes(node):
            visit(child, function, in_main_signature)

    visit(tree, None, False)
    return uses


def test_nothing_below_the_apps_reads_a_hydra_config():
    """actors/ and the pure layer (alignray/, its config schemas aside) never see a DictConfig
    nor import omegaconf: an app converts its config once (workflows/common.start_app) and
    hands on dataclasses."""
    files = [p for p in python_files("actors", "alignray") if "alignray/config/" not in p.relative_to(ROOT).as_posix()]
    found = [f"{p.relative_to(ROOT)}:{line}" for p in files for line, _, _ in hydra_uses(p)]
    assert not found, f"Hydra config types below the apps: {found}"


def test_the_apps_read_a_hydra_config_only_to_convert_it():
    """In workflows/, a Hydra node appears only in the conversion (start_app,
    compose_app_config), as the type of a `main` entry point's parameter, and in the imports
    that name them; every other function takes the dataclasses."""
    found = []
    for path in python_files("workflows"):
        name = path.relative_to(ROOT).as_posix()
        for line, function, how in hydra_uses(path):
            allowed = how is True or (name, function) in CONVERSION or (how == "import" and function is None)
            if not allowed:
                found.append(f"{name}:{line} (in {function or 'the module'})")
    assert not found, f"Hydra config types in the apps outside the conversion: {found}"


def test_an_import_of_omegaconf_in_an_app_is_used_only_where_allowed():
    """An app imports DictConfig only for its `main` (the check above sees its uses); any
    other omegaconf name is the conversion's alone."""
    for path in python_files("workflows"):
        name = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "omegaconf":
                names = {alias.name for alias in node.names}
                assert names <= ({"DictConfig", "OmegaConf"} if name == "workflows/common.py" else {"DictConfig"}), name
