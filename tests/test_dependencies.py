"""Declared dependencies match what the package imports (a plain `pip install .` must bring every
module imported at run time; the `test` extra must not be what makes the package work).

deptry (configured under [tool.deptry] in pyproject.toml) reads the package's imports and
pyproject.toml: a module imported by the package but not declared in [project].dependencies
(missing, or only present through another package or the test extra) fails, and so does a runtime
dependency the package never imports.  .ci/run checks the same from the other side: it installs
the package alone in a clean venv and serves the README's example through it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _deptry(project: Path) -> tuple[int, str]:
    """Run deptry on a project directory; (exit code, its report)."""
    res = subprocess.run([sys.executable, "-m", "deptry", "--no-ansi", "."], cwd=project,
                         capture_output=True, text=True, timeout=120)
    return res.returncode, res.stdout + res.stderr


def test_deptry_finds_no_missing_or_unused_dependency():
    code, report = _deptry(ROOT)
    assert code == 0, report


def _copy_project(dst: Path, pyproject_text: str) -> Path:
    dst.mkdir()
    for name in ("mosaicod", "migrations"):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "pyproject.toml").write_text(pyproject_text)
    return dst


def test_deptry_fails_when_a_runtime_dependency_is_removed_or_unused(tmp_path):
    """The check above can fail: drop numpy from [project].dependencies (it stays installed here,
    brought by the test extra's mosaicolabs, exactly the situation of issue 10), then declare a
    runtime dependency the package never imports."""
    text = (ROOT / "pyproject.toml").read_text()
    assert '"numpy>=' in text
    without_numpy = re.sub(r'\n\s*"numpy>=[^"]*",', "", text, count=1)
    code, report = _deptry(_copy_project(tmp_path / "missing", without_numpy))
    assert code != 0 and "'numpy' imported but" in report, report  # DEP001 missing or DEP003 transitive

    unused = text.replace('dependencies = [\n', 'dependencies = [\n    "jsonschema>=4.17",\n', 1)
    code, report = _deptry(_copy_project(tmp_path / "unused", unused))
    assert code != 0 and "DEP002 'jsonschema' defined as a dependency but not used" in report, report


def test_every_runtime_dependency_has_a_lower_bound():
    for dep in PYPROJECT["project"]["dependencies"]:
        assert re.search(r">=\s*\d", dep), f"{dep!r}: declare a lower bound (>=) for each runtime dependency"


def test_test_extra_holds_the_dev_tools_and_no_runtime_dependency():
    def name(dep: str) -> str:
        return re.split(r"[\s\[<>=!~;]", dep, maxsplit=1)[0].lower().replace("_", "-")

    runtime = {name(d) for d in PYPROJECT["project"]["dependencies"]}
    test = {name(d) for d in PYPROJECT["project"]["optional-dependencies"]["test"]}
    assert {"deptry", "pytest", "mosaicolabs"} <= test
    assert not runtime & test, f"declared both as runtime and test dependency: {runtime & test}"
