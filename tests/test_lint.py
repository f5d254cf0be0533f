"""The project's lint and format (ruff, the rules in pyproject.toml) are part of the test
command: a lint finding or an unformatted file fails the suite like a failing test."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: ./tools/install.sh installs the test extras"
    r = subprocess.run([ruff, "check", "mfs_tc", "netns_testbed", "tests", "tools"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_changes_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: ./tools/install.sh installs the test extras"
    r = subprocess.run(
        [ruff, "format", "--check", "mfs_tc", "netns_testbed", "tests", "tools"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, "run `ruff format` (files below would change):\n" + r.stdout + r.stderr
