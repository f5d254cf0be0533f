"""What the attach tests share: a veth pair (tests/nettools.VethPair) that ends with mfs-tc
detached from it, the same with mfs-tc attached on its `a` side first, and the mfs-tc command
as the tests run it (and what its one-line errors look like).

Used by the tests that attach to a veth (test_rules, test_tcx, test_apply, test_access,
test_lifecycle, test_exporter, test_namespaces, test_controller_integration and the
test_datapath_* files). Needs root (what attach needs).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from nettools import VethPair, sh

from mfs_tc.errors import MfsError
from mfs_tc.loader import AttachOptions, attach, detach

MFS = [str(Path(sys.executable).parent / "mfs-tc")]


def mfs(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `mfs-tc ARGS` (this interpreter's), output captured as text."""
    return subprocess.run(MFS + list(args), capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """`r` failed with one line on stderr, `mfs-tc: error: ...` holding every needle (no
    traceback)."""
    assert r.returncode != 0, r
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mfs-tc: error:"), r.stderr
    for needle in needles:
        assert needle in lines[0], r.stderr


@contextmanager
def veth_pair(*, also_detach: Sequence[str] = (), quiet: bool = False) -> Iterator[VethPair]:
    """A fresh VethPair; at the end whatever mfs-tc has on its `dev_a` (and on the devices of
    namespace `a` named in `also_detach`) is detached (detach is idempotent: nothing attached,
    nothing done), then the namespaces go. `quiet`: a detach that fails (MfsError) is ignored."""
    with VethPair() as n:
        try:
            yield n
        finally:
            for dev in (n.dev_a, *also_detach):
                try:
                    detach(dev, n.a)
                except MfsError:
                    if not quiet:
                        raise


@contextmanager
def attached_veth(*, checksums_in_software: bool = False, **options: object) -> Iterator[VethPair]:
    """`veth_pair()` with mfs-tc attached on `dev_a` (`AttachOptions` fields as keywords).
    `checksums_in_software`: no checksum offload on the sender, so what the peer captures
    carries final L4 checksums."""
    with veth_pair() as n:
        if checksums_in_software:
            sh("ethtool", "-K", n.dev_a, "tx", "off", ns=n.a)
        attach(AttachOptions(n.dev_a, netns=n.a, **options))  # type: ignore[arg-type]
        yield n
