"""What the simulator assumes of a starved TCP flow, checked on the wire: a bulk flow held back
by strict priority (HTB, the testbed's queue budgets) for longer than TCP's minimum
retransmission timeout finishes, once the urgent band goes idle, when the fluid model says
(tools/probe_starvation.py; docs/simulator.md "Cross-check")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.privileged

ROOT = Path(__file__).resolve().parents[1]


def test_a_starved_flow_resumes_as_a_fluid_flow() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "probe_starvation.py"), "--starve", "0.6", "--repeat", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    # both rounds starved the bulk flow: the second one runs on the same 5-tuples, so their
    # static entries outlived the first round's connections
    assert out["starved_rounds"] == 2, out["rounds"]
    for row in out["rounds"]:
        # while starved the bulk flow got at most its HTB class's guaranteed rate and a window
        assert row["bulk_bytes_while_starved"] < 1 << 20, row
        # and it then took the fluid time for the rest (measured within 1 ms; CI is noisier)
        assert abs(row["penalty_ms"]) < 30, row
