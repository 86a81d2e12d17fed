"""The tree draws the architecture: each role imports only the contract and itself.

The contract is the flat modules of ``ocrpipe/`` (settings, naming, messages, records, the
adapters, ...): every part reads and writes it, so it imports no role. The splitter, the
worker and the operator's commands are roles; so are the two deployables, which import only
their own role. The local stack and the command line stand above the roles (they start or
drive all of them); the test helpers stand outside production. The Python API
(``ocrpipe/client.py``) is a front door over the operations, like the command line; the
package's ``__init__`` re-exports it, loading it only when asked (so a service that imports
the contract never loads it). Imports are read with ``ast`` from the source, so an import
inside a function counts too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ocrpipe"
CONTRACT = "contract"
ROLES = ("splitter", "worker", "operations")
ABOVE = ("local", "cli", "testing")
API = "api"  # ocrpipe/client.py
API_MODULE = PACKAGE / "client.py"
FRONT_DOOR = PACKAGE / "__init__.py"


def part_of(module: str) -> str | None:
    """The part an ``ocrpipe`` module belongs to, or None for a module of another package."""
    parts = module.split(".")
    if parts[0] != "ocrpipe":
        return None
    if len(parts) > 1 and (REPO / "ocrpipe" / parts[1]).is_dir():
        return parts[1]
    if parts[1:2] == ["client"]:
        return API
    return CONTRACT


def module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    names = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(names)


def imports(path: Path, name: str | None = None) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the file (module ``name``, by default the one its
    path gives), relative ones resolved."""
    package = (name or module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            yield node.lineno, module
            # ``from ocrpipe import naming`` imports the module ocrpipe.naming
            for alias in node.names:
                if (REPO / Path(*module.split("."), alias.name)).exists() or (
                    REPO / Path(*module.split("."), f"{alias.name}.py")
                ).exists():
                    yield node.lineno, f"{module}.{alias.name}"


def files_of(part: str) -> list[Path]:
    if part == CONTRACT:
        return sorted(p for p in PACKAGE.glob("*.py") if p not in (API_MODULE, FRONT_DOOR))
    if part == API:
        return [API_MODULE]
    return sorted((PACKAGE / part).rglob("*.py"))


def crossings(files: list[Path], allowed: set[str], name: str | None = None) -> list[str]:
    found = []
    for path in files:
        for line, module in imports(path, name):
            part = part_of(module)
            if part is not None and part not in allowed:
                found.append(f"{path.name}:{line} imports {module} ({part})")
    return found


@pytest.mark.parametrize("role", ROLES)
def test_a_role_imports_only_the_contract_and_itself(role: str) -> None:
    assert crossings(files_of(role), {CONTRACT, role}) == []


def test_the_contract_imports_no_role() -> None:
    assert crossings(files_of(CONTRACT), {CONTRACT}) == []


@pytest.mark.parametrize(
    ("deployable", "role"),
    [("ocr_worker", "worker"), ("splitter_fn", "splitter"), ("reconciler_job", "splitter")],
)
def test_a_deployable_imports_only_its_role(deployable: str, role: str) -> None:
    assert crossings(sorted((REPO / deployable).glob("*.py")), {CONTRACT, role}) == []


def test_production_never_imports_the_test_helpers() -> None:
    parts = (CONTRACT, *ROLES, "local", "cli", API)
    production = [p for part in parts for p in files_of(part)] + [FRONT_DOOR]
    assert crossings(production, set(parts)) == []


def test_the_api_is_a_front_door_over_the_operations() -> None:
    assert crossings(files_of(API), {CONTRACT, API, "operations"}) == []


def test_the_package_loads_the_api_only_when_asked() -> None:
    """``ocrpipe/__init__.py`` imports nothing of ocrpipe at module level (every service
    runs it first), and only the API inside functions."""
    assert crossings([FRONT_DOOR], {CONTRACT, API}, name="ocrpipe") == []
    tree = ast.parse(FRONT_DOOR.read_text())
    at_import = [
        node
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        and "ocrpipe" in (getattr(node, "module", None) or "")
    ]
    assert at_import == []


def test_every_subpackage_has_a_place_in_the_layout() -> None:
    """A new subpackage must be given a place here, so its bounds are decided, not drifted."""
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages == set(ROLES) | set(ABOVE)


def test_the_checker_sees_a_crossing(tmp_path: Path) -> None:
    """The walk resolves the import forms the code uses; a crossing is reported."""
    module = tmp_path / "probe.py"
    module.write_text(
        "from ocrpipe import naming\nfrom ocrpipe.worker import page_work\n"
        "def f():\n    from ..operations.status import document_status\n"
    )
    found = crossings([module], {CONTRACT, "splitter"}, name="ocrpipe.splitter.probe")
    assert [line.split(" imports ")[1].split(" (")[0] for line in found] == [
        "ocrpipe.worker",
        "ocrpipe.worker.page_work",
        "ocrpipe.operations.status",
    ]
