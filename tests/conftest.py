"""Shared test plumbing.

Tests marked `privileged` need root, network namespaces, eBPF and qdiscs; tests marked
`ci_required` need what tools/install.sh builds or installs (the compiled simulator, the test
extra's Ray). Where they cannot run they skip locally, but under CI (`CI` set) such a skip is
turned into a failure: those tests must really run there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    must = item.get_closest_marker("privileged") or item.get_closest_marker("ci_required")
    if report.skipped and os.environ.get("CI") and must:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{must.name} test skipped under CI (must run): {reason}"


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if item.get_closest_marker("privileged"):
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _host_left_as_found():
    """Scratch pins and attach state live under /sys/fs/bpf/mfs and /run/mfs-tc; a test run that
    created those roots removes them again (when empty), so the host ends as it began."""
    from mfs_tc.layout import PIN_ROOT
    from mfs_tc.loader import STATE_ROOT, _release_run_bind

    roots = [r for r in (PIN_ROOT, STATE_ROOT) if not r.exists()]
    yield
    if os.geteuid() == 0:
        _release_run_bind()  # attach's /run/mfs-tc/bpffs bind, once nothing is attached
    for r in roots:
        for d in sorted((p for p in r.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass
        try:
            r.rmdir()
        except OSError:
            pass
