"""alignray: RLHF as a distributed workflow on Ray.

One import name for everything. In a source checkout the Ray roles sit at the top of the
repository (actors/, workflows/, cluster/, conf/), as the design lays it out; a wheel maps
them inside this package (pyproject's package-dir), so that it installs one top-level name
and not generic ones such as `actors` or `workflows`. Either way they import as
alignray.actors, alignray.workflows and alignray.cluster, and Hydra reads CONF_DIR.
"""
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent

if (_PACKAGE_DIR / "conf").is_dir():  # installed from a wheel
    CONF_DIR = _PACKAGE_DIR / "conf"
else:  # a source checkout: the repository root holds the role packages and conf/
    CONF_DIR = _PACKAGE_DIR.parent / "conf"
    __path__.append(str(_PACKAGE_DIR.parent))
