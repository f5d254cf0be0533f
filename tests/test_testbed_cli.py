"""Bad input to `mfs-tc testbed` gives a clear error and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys

CLI = [sys.executable, "-c", "import sys; from mfs_tc.cli import main; sys.exit(main(sys.argv[1:]))"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "testbed", *args], capture_output=True, text=True, timeout=60)


def test_unknown_policy_is_named():
    r = _run("run", "--policy", "mfs,nope", "--out", "/tmp/mfs-tc-never")
    assert r.returncode != 0
    assert "nope" in r.stderr and "Traceback" not in r.stderr


def test_bad_numbers_are_named():
    r = _run("run", "--load", "fast")
    assert r.returncode != 0 and "--load" in r.stderr and "Traceback" not in r.stderr
    r = _run("run", "--rate", "lots")
    assert r.returncode != 0 and "rate" in r.stderr and "Traceback" not in r.stderr
    r = _run("run", "--seed", "a-b")
    assert r.returncode != 0 and "--seed" in r.stderr and "Traceback" not in r.stderr
    r = _run("run", "--rto-min-ms", "-5")
    assert r.returncode != 0 and "--rto-min-ms" in r.stderr and "Traceback" not in r.stderr


def test_bad_policy_config_is_named_before_any_run():
    # a key one of the policies does not take fails before the testbed is built
    r = _run("run", "--policy", "mfs,edf", "--policy-config", "scavenger=false", "--out", "/tmp/mfs-tc-never")
    assert r.returncode != 0 and "edf" in r.stderr and "scavenger" in r.stderr and "Traceback" not in r.stderr
    r = _run("run", "--policy-config", "oops")
    assert r.returncode != 0 and "KEY=VALUE" in r.stderr and "Traceback" not in r.stderr


def test_report_of_missing_directory(tmp_path):
    r = _run("report", str(tmp_path / "none"))
    assert r.returncode != 0 and "summary.json" in r.stderr and "Traceback" not in r.stderr


def test_cli_defaults_are_the_testbeds_own():
    """The CLI keeps literal defaults (it imports the testbed only when a command runs); they
    must be the testbed's constants, so the two never drift apart."""
    import inspect

    from mfs_tc.cli.testbed import run_cmd
    from netns_testbed.topology import DEFAULT_HOST_QUEUE_MS

    assert inspect.signature(run_cmd).parameters["host_queue_ms"].default == DEFAULT_HOST_QUEUE_MS
