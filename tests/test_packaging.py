"""pyproject.toml declares every package the code imports, and a Python whose syntax the code keeps to."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from tests.conftest import REPO_ROOT

SOURCES = ["iti", "validation", "get_activations", "benchmarks", "legacy", "utils.py"]
OWN_MODULES = {"iti", "legacy", "validation", "benchmarks", "tests", "utils"}


def project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def source_files() -> list:
    return sorted(path for name in SOURCES for path in
                  ([REPO_ROOT / name] if name.endswith(".py") else (REPO_ROOT / name).rglob("*.py")))


def imported_modules(path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


def distribution_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_imported_package_is_declared():
    # lm_eval's scripts (validation/lm_eval_crosscheck.py) need the optional extra that names it.
    declared = {distribution_name(r) for r in project()["dependencies"] + project()["optional-dependencies"]["lm-eval"]}
    distributions = importlib.metadata.packages_distributions()
    third_party = {module for path in source_files() for module in imported_modules(path)} \
        - set(sys.stdlib_module_names) - OWN_MODULES
    undeclared = {module: distributions.get(module) for module in third_party
                  if not {d.lower().replace("_", "-") for d in distributions.get(module, [module])} & declared}
    assert undeclared == {}


def test_the_code_keeps_to_the_syntax_of_the_oldest_python_declared():
    oldest = tuple(int(part) for part in re.fullmatch(r">=(\d+)\.(\d+)", project()["requires-python"]).groups())
    for path in source_files():
        ast.parse(path.read_text(), str(path), feature_version=oldest)


def test_setup_installs_extras_by_their_normalised_names():
    """setup.sh's extras are named as pyproject.toml declares them, in the normalised form (lowercase, runs of
    -_. as one -) that setuptools writes into the metadata: pip 23.2 installs nothing for a spelling that differs
    ("lm_eval" for "lm-eval"), and CI would then miss the lm-eval tests' dependency."""
    requested = re.findall(r'-e "\.\[([^\]]*)\]"', (REPO_ROOT / "setup.sh").read_text())
    assert requested, "setup.sh installs the project with no extras"
    extras = {name for group in requested for name in group.split(",")}
    declared = set(project()["optional-dependencies"])
    assert extras <= declared
    assert all(name == re.sub(r"[-_.]+", "-", name).lower() for name in declared)
