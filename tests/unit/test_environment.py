"""The logged models' pip requirements: pinned, complete for the served code, nothing else."""

import ast
import importlib.metadata
import sys
from pathlib import Path

import pytest

from mlpipe_vision import environment

PACKAGE_DIR = Path(environment.__file__).parent
# The modules the packaged model runs: its code, and what that code imports from the package.
SERVED_MODULES = ("pyfunc_model", "serving", "images", "console")


def imported_names(module: str) -> set[str]:
    """Top-level names of every module a file imports, at any depth of its code."""
    tree = ast.parse((PACKAGE_DIR / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_requirements_are_pinned_to_what_is_installed():
    requirements = environment.pinned_requirements(environment.PACKAGED_MODEL_DISTRIBUTIONS)
    assert requirements[0] == f"mlflow-skinny=={importlib.metadata.version('mlflow-skinny')}"
    assert f"tensorflow=={importlib.metadata.version('tensorflow')}" in requirements
    assert len(requirements) == len(environment.PACKAGED_MODEL_DISTRIBUTIONS)


def test_a_missing_distribution_is_named():
    with pytest.raises(ValueError, match="no-such-distribution-here is not installed"):
        environment.pinned_requirements(("numpy", "no-such-distribution-here"))


def test_the_served_code_imports_nothing_but_the_packaged_model_requirements():
    own = {"mlpipe_vision"}
    imports = set().union(*(imported_names(module) for module in SERVED_MODULES))
    package_modules = {
        node.names[0].name
        for module in SERVED_MODULES
        for node in ast.walk(ast.parse((PACKAGE_DIR / f"{module}.py").read_text()))
        if isinstance(node, ast.ImportFrom) and node.module == "mlpipe_vision"
    }
    assert package_modules <= set(SERVED_MODULES), "the served code imports more of the package"
    third_party = imports - own - set(sys.stdlib_module_names)
    distributions = importlib.metadata.packages_distributions()
    allowed = set(environment.PACKAGED_MODEL_DISTRIBUTIONS)
    for name in sorted(third_party):
        providers = {provider.lower() for provider in distributions.get(name, [])}
        assert providers & allowed, f"the served code imports {name} from {providers or '?'}"


def test_no_requirement_names_this_project():
    for distributions in (
        environment.KERAS_MODEL_DISTRIBUTIONS,
        environment.PACKAGED_MODEL_DISTRIBUTIONS,
    ):
        assert not {"mlpipe", "mlpipe-vision", "mlpipe_vision"} & set(distributions)
