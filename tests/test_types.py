"""The project's type check (mypy --strict, [tool.mypy] in pyproject.toml) is part of the test
command: a type error in a strict-clean module (the `files` list there) fails the suite like a
failing test. Modules join that list once they are clean (docs/architecture.md, "Types")."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def strict_clean_files() -> list[str]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert cfg.get("strict") is True, "[tool.mypy] must stay strict"
    return list(cfg["files"])


def test_strict_clean_set_exists():
    files = strict_clean_files()
    missing = [f for f in files if not (ROOT / f).is_file()]
    assert not missing, f"[tool.mypy] files lists modules that do not exist: {missing}"
    assert len(files) == len(set(files)), "[tool.mypy] files lists a module twice"


def test_mypy_strict_finds_nothing():
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")
    assert mypy, "mypy is not installed: ./tools/install.sh installs the test extras"
    # no arguments: mypy reads pyproject.toml ([tool.mypy] files, strict, the per-dependency overrides)
    r = subprocess.run([mypy], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"in {len(strict_clean_files())} source file" in r.stdout, r.stdout
