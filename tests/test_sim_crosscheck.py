"""Cross-check: the simulator against the netns testbed on the testbed's workload, over load.

Both replay the same `mfs_tc.workload` (Mooncake trace windows of 40 requests, dense-small, 1 KV +
2x2 prefill + 1 decode host at 200 Mbit/s, slo_scale 5) at 1.5 / 2.5 / 3.5 req/s, seeds 1 and 2,
under the same policy objects. The fluid model is given what the testbed's TCP has and the fluid
ideal lacks (docs/simulator.md, "Cross-check"): a per-flow setup latency (`FLOW_SETUP_S`: the
connection handshake plus the controller's registration), the payload fraction of the link
rate (`GOODPUT`: a 1448-byte TCP segment in a 1514-byte frame, which HTB counts) and promotions
that wait for a packet (`PROMOTION_RTO_S`: a starved flow's new level lands when its band moves
or at TCP's retransmission timeout, Linux's minimum 200 ms, doubling).

Claims checked (the ones docs/simulator.md makes, with the measured figures there):
- per policy and load, the attainment (mean over the seeds) within `TOLERANCE` of the testbed's:
  0.1, 8 of a point's 80 requests. The testbed's hosts have their kernel queue budgets scaled
  to the link rate (`host_queue_ms`, the default). Against three testbed runs the largest gap
  was 0.026, 0.051 and 0.075 (fair at 2.5 req/s, where the testbed's own runs differ by 0.06);
  before the promotion model mfs was off by up to 0.088, and before the queue budgets the bound
  was 0.2.
- mfs vs each baseline: the simulator never ranks the other way by more than its own seed spread
  wherever the testbed's gap exceeds the testbed's seed spread (the larger of the two policies'
  max-min over seeds at that load).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mfs_tc.results import compare_results, comparison_table
from mfs_tc.workload import default_trace_path

TOLERANCE = {"mfs": 0.1, "fair": 0.1, "edf": 0.1}
POLICIES = ["mfs", "fair", "edf"]
LOADS = [1.5, 2.5, 3.5]
SEEDS = [1, 2]
REQUESTS = 40
FLOW_SETUP_S = 0.006
GOODPUT = 1448 / 1514
PROMOTION_RTO_S = 0.2


def _by_point(runs: list[dict]) -> dict[tuple[str, float], list[float]]:
    out: dict[tuple[str, float], list[float]] = {}
    for r in runs:
        out.setdefault((r["policy"], float(r["load"])), []).append(r["attainment"])
    return out


def ranking_mismatches(tb: dict[tuple[str, float], list[float]], sim: dict[tuple[str, float], list[float]]) -> list[tuple]:
    """(baseline, load, testbed gap, spread, sim gap) where the testbed's mfs-vs-baseline gap
    exceeds its seed spread and the simulator ranks the other way by more than its own seed
    spread (a simulator gap inside its spread is a tie, not a contradiction: at 1.5 req/s one
    testbed run had mfs 0.775 against edf's 0.925 while the simulator had 0.91 against 0.90)."""
    bad = []
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    for b in POLICIES[1:]:
        for load in LOADS:
            gap = mean(tb[("mfs", load)]) - mean(tb[(b, load)])
            spread = max(max(tb[(p, load)]) - min(tb[(p, load)]) for p in ("mfs", b))
            sgap = mean(sim[("mfs", load)]) - mean(sim[(b, load)])
            sspread = max(max(sim[(p, load)]) - min(sim[(p, load)]) for p in ("mfs", b))
            if abs(gap) > spread and gap * sgap < 0 and abs(sgap) > sspread:
                bad.append((b, load, round(gap, 3), round(spread, 3), round(sgap, 3)))
    return bad


def test_ranking_rule_flags_only_gaps_beyond_the_spread() -> None:
    tb = (
        {("mfs", x): [0.8, 0.8] for x in LOADS}
        | {("fair", x): [0.5, 0.6] for x in LOADS}
        | {("edf", x): [0.7, 0.9] for x in LOADS}
    )
    sim = {("mfs", x): [0.5] for x in LOADS} | {("fair", x): [0.6] for x in LOADS} | {("edf", x): [0.9] for x in LOADS}
    bad = ranking_mismatches(tb, sim)
    # fair: testbed gap 0.25 > spread 0.1 and the simulator ranks fair first: flagged at every
    # load; edf: gap 0.0 within the spread 0.2: never flagged
    assert [(b, load) for b, load, *_ in bad] == [("fair", x) for x in LOADS]


@pytest.mark.privileged
@pytest.mark.slow
@pytest.mark.skipif(not default_trace_path().is_file(), reason="Mooncake trace not present")
def test_sim_attainment_within_tolerance_of_testbed(tmp_path: Path) -> None:
    from mfs_tc.sim.runner import SimRunConfig, run_sim
    from netns_testbed.runner import RunConfig, run_testbed

    common = dict(policies=POLICIES, num_requests=REQUESTS, loads=LOADS, seeds=SEEDS)
    tb = run_testbed(RunConfig(**common, prefix="mfsx", pause_s=0.5), tmp_path / "testbed", progress_out=None)
    sim = run_sim(
        SimRunConfig(**common, flow_setup_s=FLOW_SETUP_S, goodput=GOODPUT, promotion_rto_s=PROMOTION_RTO_S, bound=False),
        tmp_path / "sim",
        plots=False,
        progress_out=None,
    )
    tbp, simp = _by_point(tb["runs"]), _by_point(sim["runs"])
    # request by request (`mfs-tc sim compare`): attainment and every stage's mean time
    points = compare_results(tmp_path / "testbed", tmp_path / "sim")
    print(comparison_table(points, "testbed", "sim"))
    assert {(p.policy, p.load) for p in points} == {(p, x) for p in POLICIES for x in LOADS}
    assert all(p.requests == REQUESTS * len(SEEDS) for p in points)
    diffs = {(p.policy, p.load): round(p.difference, 3) for p in points}
    assert all(abs(d) <= TOLERANCE[p] for (p, _), d in diffs.items()), (diffs, tbp, simp)
    assert ranking_mismatches(tbp, simp) == [], (tbp, simp)
    # same result shape: the report code reads both
    assert (tmp_path / "sim" / "requests.csv").read_text().splitlines()[0] == (
        tmp_path / "testbed" / "requests.csv"
    ).read_text().splitlines()[0]
