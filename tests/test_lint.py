"""The project's lint (ruff, the rules in pyproject.toml) is part of the test command: a lint
finding fails the suite like a failing test."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: ./tools/install.sh installs the test extras"
    r = subprocess.run([ruff, "check", "mfs_tc", "netns_testbed", "tests", "tools"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
