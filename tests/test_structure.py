"""The folder tree is the architecture: the shared runtime `mesh` imports no service, no
facade and no launcher, nor the client module built on it; a service imports no other service
(they talk over gRPC)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("auth", "products", "inventory")
TOP_LEVEL = {*SERVICES, "mesh", "facade", "launcher"}


def imported_modules(package: str) -> dict[str, set[str]]:
    """Each module of `package` -> the modules it imports, by absolute name."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        if "migrations" in path.parts:
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        found[str(path.relative_to(ROOT))] = names
    return found


def imported_packages(package: str) -> dict[str, set[str]]:
    """Each module of `package` -> the project's top-level packages it imports."""
    return {
        module: {name.split(".")[0] for name in names} & TOP_LEVEL - {package}
        for module, names in imported_modules(package).items()
    }


def test_the_shared_runtime_imports_no_service_facade_or_launcher() -> None:
    assert {module: names for module, names in imported_packages("mesh").items() if names} == {}


def test_the_shared_runtime_does_not_import_the_client_built_on_it() -> None:
    wrong = {module: names & {"invmesh.client"} for module, names in imported_modules("mesh").items()}
    assert {module: names for module, names in wrong.items() if names} == {}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_only_the_runtime(service: str) -> None:
    wrong = {module: names - {"mesh"} for module, names in imported_packages(service).items()}
    assert {module: names for module, names in wrong.items() if names} == {}


def test_the_facade_imports_no_service() -> None:
    wrong = {module: names - {"mesh"} for module, names in imported_packages("facade").items()}
    assert {module: names for module, names in wrong.items() if names} == {}
