"""The classifier and the ETS backend on a stock Debian kernel, booted in a VM by
tools/vm_check.sh (virtme-ng over QEMU; a few minutes under TCG emulation).

Marked `vm`; runs only with MFS_VM_TESTS=1 (default CI is not promised qemu and has a time
budget), as root:

    MFS_VM_TESTS=1 .venv/bin/python -m pytest -q -m vm tests/test_vm_kernels.py

MFS_VM_KERNEL picks the kernel version to boot (default: the newest Debian kernel in /boot, which
vm_check.sh installs when there is none).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VM_CHECK = REPO / "tools" / "vm_check.sh"
TIMEOUT_S = 1800  # install on first use + boot + bcc compile under emulation

# This module is also its own plugin (test modules' `pytest_plugins` are imported right after
# the module): its pytest_configure registers the `vm` marker, and the marker is put on the items
# in a hook, so no unregistered-marker warning is raised (and --strict-markers passes) without
# touching the shared conftest or pyproject.
pytest_plugins = [__name__]

MARKER_DOC = "vm: boots a stock kernel in a VM with tools/vm_check.sh; runs only with MFS_VM_TESTS=1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)


@pytest.hookimpl(tryfirst=True)  # before `-m` selection reads the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    me = sys.modules[__name__]
    for item in items:
        if isinstance(item, pytest.Function) and item.module is me:
            item.add_marker("vm")


def _enabled() -> bool:
    return os.environ.get("MFS_VM_TESTS") == "1"


@pytest.mark.skipif(not _enabled(), reason="VM kernel checks run only with MFS_VM_TESTS=1 (needs qemu, minutes)")
def test_debian_kernel_verifier_ets_classification_detach() -> None:
    if os.geteuid() != 0:
        pytest.fail("MFS_VM_TESTS=1 needs root (tools/vm_check.sh installs packages and reads /boot)")
    r = subprocess.run([str(VM_CHECK)], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    assert lines, f"vm_check.sh printed no result (exit {r.returncode}):\n{r.stderr[-4000:]}"
    res = json.loads(lines[-1])
    print(json.dumps(res, indent=1, sort_keys=True))
    failed = {k: v.get("error") for k, v in res["steps"].items() if not v.get("ok")}
    assert r.returncode == 0 and res["ok"], f"failed steps {failed} on {res.get('kernel')}"
    want = os.environ.get("MFS_VM_KERNEL")
    if want:
        assert res["kernel"] == want
    assert res["kernel"] != os.uname().release, "the VM booted the host's own kernel"
    steps = res["steps"]
    assert set(steps) == {"verifier", "attach", "classify", "detach"}
    assert steps["attach"]["backend"] == "ets"
    assert steps["attach"]["bands"] == steps["attach"]["strict"] == 8
    cls = steps["classify"]["class_bytes"]
    # level L rides ETS band L, class <handle>:<L+1>
    assert cls["4d46:2"] >= steps["classify"]["offered"]["1"]
    assert cls["4d46:6"] >= steps["classify"]["offered"]["5"]
    assert "noqueue" in steps["detach"]["qdisc_after"]
