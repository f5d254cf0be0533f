"""Which way imports go (docs/architecture.md): the pinned-map layer (mfs_tc.maps) is below both
the loader (which enforces) and the controller (the serving library, which decides); neither of
those two imports the other, and the serving library never imports bcc, pyroute2 or the loader."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _modules_after(imports: str) -> set[str]:
    code = f"import sys\n{imports}\nprint('\\n'.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(r.stdout.split())


@pytest.mark.parametrize(
    "module", ["mfs_tc.loader", "mfs_tc.status", "mfs_tc.apply", "mfs_tc.exporter", "mfs_tc.maps", "mfs_tc.attachment"]
)
def test_the_enforcing_side_does_not_import_the_serving_library(module: str) -> None:
    mods = _modules_after(f"import {module}")
    assert module in mods
    assert "mfs_tc.controller" not in mods


def test_the_serving_library_imports_neither_bcc_nor_the_loader() -> None:
    mods = _modules_after("import mfs_tc.controller")
    assert "mfs_tc.maps" in mods
    assert not {"bcc", "pyroute2", "mfs_tc.loader", "mfs_tc.netlink"} & mods, sorted(
        {"bcc", "pyroute2", "mfs_tc.loader", "mfs_tc.netlink"} & mods
    )
