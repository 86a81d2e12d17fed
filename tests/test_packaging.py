"""The splitter's Cloud Functions source tree, as ``splitter_fn/package.sh`` builds it.

Runs the real script (a real ``pip wheel`` of this project; pip fetches setuptools from the
package index for its isolated build) into a temporary directory and checks what Cloud
Functions will receive: main.py at the top, a requirements.txt naming the wheel by a
relative path, and a wheel that carries the shared core, including its data file.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "splitter_fn" / "package.sh"
# The one version string is pyproject.toml's.
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
WHEEL = f"ocrpipe-{VERSION}-py3-none-any.whl"


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("splitter") / "build"
    result = subprocess.run(
        ["bash", str(SCRIPT), str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_layout_is_main_requirements_and_one_wheel(packaged: Path) -> None:
    assert sorted(p.name for p in packaged.iterdir()) == ["main.py", "requirements.txt", "wheels"]
    wheels = list((packaged / "wheels").iterdir())
    assert [w.name for w in wheels] == [WHEEL]


def test_main_is_the_splitter_entry_module(packaged: Path) -> None:
    source = (REPO / "splitter_fn" / "main.py").read_bytes()
    assert (packaged / "main.py").read_bytes() == source
    # terraform/functions.tf deploys entry_point = "on_finalize": it must be a module name.
    tree = ast.parse(source)
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    defined |= {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert "on_finalize" in defined


def test_requirements_install_the_local_wheel(packaged: Path) -> None:
    lines = [
        line.strip()
        for line in (packaged / "requirements.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines == [f"./wheels/{WHEEL}"]
    assert (packaged / lines[0]).is_file()


def test_wheel_carries_the_shared_core(packaged: Path) -> None:
    wheel = packaged / "wheels" / WHEEL
    names = set(zipfile.ZipFile(wheel).namelist())
    # topology.json and models.json are read at import time by ocrpipe.settings: a wheel
    # without them breaks.
    for required in ("ocrpipe/settings.py", "ocrpipe/splitter/split.py", "ocrpipe/topology.json",
                     "ocrpipe/models.json"):  # fmt: skip
        assert required in names
    metadata = zipfile.ZipFile(wheel).read(f"ocrpipe-{VERSION}.dist-info/METADATA").decode()
    assert "Requires-Dist: functions-framework==" in metadata
