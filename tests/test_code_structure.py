"""Rules about where code may do what, checked by reading the source (no imports)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HYDRA_NAMES = {"DictConfig", "OmegaConf", "ListConfig"}
# The one place an app's composed config is read as a Hydra node and turned into the
# dataclasses of alignray.config (start_app), plus composing it without a command line.
CONVERSION = {("workflows/common.py", "start_app"), ("workflows/common.py", "compose_app_config")}


def python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


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
