"""The project's type check (mypy --strict, [tool.mypy] in pyproject.toml) is part of the test
command: a type error in a strict-clean module (the `files` list there) fails the suite like a
failing test. Modules join that list once they are clean (docs/architecture.md, "Types")."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from mfs_tc.sim.accel import OUT_DIR

ROOT = Path(__file__).resolve().parents[1]


def mypy_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]


def strict_clean_files() -> list[str]:
    cfg = mypy_config()
    assert cfg.get("strict") is True, "[tool.mypy] must stay strict"
    return list(cfg["files"])


def pending_modules() -> list[str]:
    """The modules still to follow: the override that does not report their errors."""
    return [m for o in mypy_config().get("overrides", []) if o.get("follow_imports") == "silent" for m in o["module"]]


def test_strict_clean_set_exists():
    files = strict_clean_files()
    missing = [f for f in files if not (ROOT / f).is_file()]
    assert not missing, f"[tool.mypy] files lists modules that do not exist: {missing}"
    assert len(files) == len(set(files)), "[tool.mypy] files lists a module twice"


def test_every_module_is_clean_or_listed_as_pending():
    """A module is in the strict-clean set or named as still to follow, never neither (a new
    module joins `files`); no module is both."""
    pending = pending_modules()

    def is_pending(mod: str) -> bool:
        # mypy's `pkg.*` matches pkg itself and every module under it
        return any(mod == p or (p.endswith(".*") and (mod == p[:-2] or mod.startswith(p[:-1]))) for p in pending)

    files = set(strict_clean_files())
    neither, both = [], []
    for pkg in ("mfs_tc", "netns_testbed"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            if OUT_DIR in f.parents:  # the compiled simulator's build copies (not in git)
                continue
            rel = f.relative_to(ROOT).as_posix()
            mod = rel[:-3].replace("/", ".").removesuffix(".__init__")
            if rel in files and is_pending(mod):
                both.append(rel)
            elif rel not in files and not is_pending(mod):
                neither.append(rel)
    assert not neither, f"add these to [tool.mypy] files (strict-clean) or the pending override: {neither}"
    assert not both, f"in [tool.mypy] files and in the pending override: {both}"


def test_mypy_strict_finds_nothing():
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")
    assert mypy, "mypy is not installed: ./tools/install.sh installs the test extras"
    # no arguments: mypy reads pyproject.toml ([tool.mypy] files, strict, the per-dependency overrides)
    r = subprocess.run([mypy], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"in {len(strict_clean_files())} source file" in r.stdout, r.stdout
