"""Shared test plumbing.

Tests marked `privileged` need root, network namespaces, eBPF and qdiscs. Where they cannot run
they skip locally, but under CI (`CI` set) such a skip is turned into a failure: the privileged
tests must really run there.
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
    if report.skipped and os.environ.get("CI") and item.get_closest_marker("privileged"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"privileged test skipped under CI (must run): {reason}"


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if item.get_closest_marker("privileged"):
            item.add_marker(skip)
