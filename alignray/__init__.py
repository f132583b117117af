"""alignray: RLHF as a distributed workflow on Ray.

One import name for everything. In a source checkout the Ray roles sit at the top of the
repository (actors/, workflows/, cluster/, conf/), as the design lays it out; a wheel maps
them inside this package (pyproject's package-dir), so that it installs one top-level name
and not generic ones such as `actors` or `workflows`. Either way they import as
alignray.actors, alignray.workflows and alignray.cluster, and Hydra reads CONF_DIR. In a
checkout only those four folders are mapped (a finder below), so `alignray.tests` or
`alignray.benchmarks` do not import.
"""
import importlib.abc
import importlib.util
import sys
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
ROLE_PACKAGES = ("actors", "workflows", "cluster", "conf")

if (_PACKAGE_DIR / "conf").is_dir():  # installed from a wheel
    CONF_DIR = _PACKAGE_DIR / "conf"
else:  # a source checkout: the repository root holds the role packages and conf/
    CONF_DIR = _PACKAGE_DIR.parent / "conf"

    class _CheckoutRoles(importlib.abc.MetaPathFinder):
        """alignray.<role> -> <checkout>/<role>/, for the four role packages only."""

        def find_spec(self, fullname, path=None, target=None):
            prefix, _, role = fullname.partition(".")
            folder = _PACKAGE_DIR.parent / role
            if prefix != __name__ or role not in ROLE_PACKAGES or not (folder / "__init__.py").is_file():
                return None
            return importlib.util.spec_from_file_location(
                fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])

    if not any(type(finder).__name__ == "_CheckoutRoles" for finder in sys.meta_path):
        sys.meta_path.insert(0, _CheckoutRoles())
