"""`mfs-tc testbed matrix` on the real kernel: a point runs as real TCP under each policy, its
lines land in runs.jsonl in the simulator's matrix vocabulary, and a rerun resumes (runs
nothing already there). Namespace prefix "mfbm" (never a concurrent testbed's)."""

from __future__ import annotations

import json

import pytest

from mfs_tc.sim.matrix import MatrixConfig, Scenario
from netns_testbed.matrix import run_testbed_matrix
from netns_testbed.netns import list_netns

pytestmark = pytest.mark.privileged


def test_testbed_matrix_runs_real_points_and_resumes(tmp_path):
    sc = Scenario("netns-tiny", "mooncake", "dense-small", "testbed", (3.0,), (5.0,), 6)
    cfg = MatrixConfig(scenarios=[sc], policies=["mfs", "fair"], seeds=[1], bound=True)
    s1 = run_testbed_matrix(cfg, tmp_path, plots=False, progress_out=None, prefix="mfbm")
    lines = [json.loads(x) for x in (tmp_path / "runs.jsonl").read_text().splitlines()]
    runs = [ln for ln in lines if ln["kind"] == "run"]
    assert sorted(ln["policy"] for ln in runs) == ["fair", "mfs"]
    for ln in runs:
        r = ln["run"]
        assert ln["source"] == "testbed" and r["requests"] == 6 and r["finished"] == 6
        # real TCP: every byte the plan intended arrived
        assert r["bytes_delivered"] == r["bytes_intended"] > 0
        assert 0.0 <= r["attainment"] <= 1.0
    bound = [ln for ln in lines if ln["kind"] == "bound"][0]["bound"]
    assert max(ln["run"]["met"] for ln in runs) <= bound["met_max"] <= 6
    assert s1["meta"]["ran"] == {"runs": 2, "bounds": 1}
    # rerun: nothing left to do
    s2 = run_testbed_matrix(cfg, tmp_path, plots=False, progress_out=None, prefix="mfbm")
    assert s2["meta"]["ran"] == {"runs": 0, "bounds": 0}
    assert not [n for n in list_netns() if n.startswith("mfbm")]
