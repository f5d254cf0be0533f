"""Each baseline orders flows as its definition says (levels evaluated as the kernel will)."""

from __future__ import annotations

import pytest

from mfs_tc.layout import MODE_LAXITY, MODE_REMAINING, MODE_SENT, MODE_STATIC
from mfs_tc.model import Batch, Flow, Request, Stage
from mfs_tc.policy import make_policy

MS = 1_000_000
KiB, MiB = 1 << 10, 1 << 20
T0 = 10**12


def req(rid: int = 1, arrival: int = T0, slo_ms: int = 1000, **kw) -> Request:
    return Request(request_id=rid, arrival_ns=arrival, slo_ns=slo_ms * MS, **kw)


def test_fair_one_level_for_everything():
    pol = make_policy("fair")
    levels = {
        pol.entry(req(), Stage(s), Flow(bytes=b), T0).level(T0 + dt)
        for s in ("kv_fetch", "collective", "p2d")
        for b in (1, 10 * MiB)
        for dt in (0, 900 * MS)
    }
    assert levels == {0}
    assert make_policy("fair", level=3).entry(req(), Stage("p2d"), Flow(bytes=1), T0).levels == [3]
    assert not pol.is_hopeless(req(slo_ms=1), T0 + 10 * MS)


def test_sjf_smaller_flow_first_static():
    pol = make_policy("sjf")  # thresholds 64K, 256K, 1M, 4M, 16M, 64M -> levels 0..6
    small, mid, big = (pol.entry(req(), Stage("kv_fetch"), Flow(bytes=b), T0) for b in (10 * KiB, 1 * MiB, 100 * MiB))
    assert small.mode == MODE_STATIC
    assert (small.level(T0), mid.level(T0), big.level(T0)) == (0, 3, 6)
    # static: sending does not change it
    assert big.level(T0, sent=100 * MiB - 1) == 6


def test_srpt_promotes_as_the_flow_drains():
    pol = make_policy("srpt")
    e = pol.entry(req(), Stage("p2d"), Flow(bytes=1 * MiB), T0)
    assert e.mode == MODE_REMAINING and e.total_bytes == MiB
    assert e.level(T0) == 3  # 1 MiB remaining
    assert e.level(T0, sent=900 * KiB) == 1  # 124 KiB remaining
    assert e.level(T0, sent=MiB) == 0
    # a big flow nearly done outranks a fresh medium one
    big = pol.entry(req(), Stage("p2d"), Flow(bytes=10 * MiB), T0)
    assert big.level(T0, sent=10 * MiB - 10 * KiB) < e.level(T0)


def test_pias_starts_high_and_demotes_by_bytes_sent():
    pol = make_policy("pias")
    e = pol.entry(req(), Stage("kv_fetch"), Flow(bytes=100 * MiB), T0)
    assert e.mode == MODE_SENT
    assert e.level(T0) == 0  # size unknown: every flow starts at the top
    assert e.level(T0, sent=100 * KiB) == 1
    assert e.level(T0, sent=2 * MiB) == 3
    assert e.level(T0, sent=100 * MiB) == 6
    tiny = pol.entry(req(), Stage("kv_fetch"), Flow(bytes=1 * KiB), T0)
    assert tiny.level(T0) == e.level(T0)


def test_edf_earliest_deadline_first_and_promoted_as_it_nears():
    pol = make_policy("edf")  # 50, 100, 200, 500, 1000, 2000 ms -> 0..6
    near = pol.entry(req(1, slo_ms=100), Stage("p2d"), Flow(bytes=1), T0)
    far = pol.entry(req(2, slo_ms=800), Stage("p2d"), Flow(bytes=1), T0)
    assert near.mode == MODE_LAXITY and near.ps_per_byte == 0 and near.deadline_ns == T0 + 100 * MS
    assert (near.level(T0), far.level(T0)) == (2, 4)
    assert far.level(T0 + 700 * MS) == 2  # 100 ms to go, like `near` was
    assert far.level(T0 + 790 * MS) == 0
    # a batch flow serves every request of its batch: the earliest deadline counts
    b = req(3, slo_ms=800, batch=Batch(1, [T0 + 60 * MS, T0 + 800 * MS]))
    assert pol.entry(b, Stage("collective"), Flow(bytes=1), T0).deadline_ns == T0 + 60 * MS
    assert pol.entry(b, Stage("p2d"), Flow(bytes=1), T0).deadline_ns == T0 + 800 * MS


def test_fifo_older_requests_first():
    pol = make_policy("fifo")  # ages 10, 50, 100, 200, 500, 1000 ms -> levels 6..0
    old = pol.entry(req(1, arrival=T0), Stage("p2d"), Flow(bytes=1), T0)
    young = pol.entry(req(2, arrival=T0 + 900 * MS), Stage("p2d"), Flow(bytes=1), T0 + 900 * MS)
    now = T0 + 1000 * MS
    assert old.deadline_ns == T0 and old.ps_per_byte == 0
    assert old.level(now) == 1  # age 1000 ms: > 500, not > 1000
    assert young.level(now) == 4  # age 100 ms: > 50, not > 100
    assert old.level(now + 1) == 0
    assert young.level(T0 + 900 * MS) == 6  # just arrived


def test_stage_static_priority_by_stage():
    pol = make_policy("stage")
    lv = {s: pol.entry(req(), Stage(s), Flow(bytes=1), T0).level(T0) for s in ("collective", "kv_fetch", "p2d")}
    assert lv["collective"] < lv["kv_fetch"] < lv["p2d"]
    assert lv == {"collective": 0, "kv_fetch": 1, "p2d": 2}
    assert make_policy("stage", p2d_level=5).entry(req(), Stage("p2d"), Flow(bytes=1), T0).levels == [5]


def test_karuna_deadline_flows_first_earliest_deadline_first_others_demoted_by_bytes_sent():
    pol = make_policy("karuna")  # p2d: deadline-now 100, 500 ms -> 0..2; sent 64K..16M -> 3..6
    late = pol.entry(req(slo_ms=2000), Stage("p2d", compute_after_ns=10 * MS), Flow(bytes=100 * MiB), T0)
    soon = pol.entry(req(slo_ms=300), Stage("p2d", compute_after_ns=10 * MS), Flow(bytes=100 * MiB), T0)
    kv = pol.entry(req(), Stage("kv_fetch"), Flow(bytes=100 * MiB), T0)
    # deadline flows ordered by their deadline (the p2d deadline: request deadline - decode step)
    assert soon.deadline_ns == T0 + 290 * MS
    assert (soon.level(T0), late.level(T0)) == (1, 2)
    assert late.level(T0 + 1500 * MS) == 1 and late.level(T0 + 1950 * MS) == 0
    assert kv.mode == MODE_SENT
    assert kv.level(T0) == 3  # below every deadline flow, even fresh
    assert kv.level(T0, sent=100 * KiB) == 4
    assert kv.level(T0, sent=2 * MiB) == 5
    assert kv.level(T0, sent=50 * MiB) == 6
    # a fair-sharing policy would give all of these one level: karuna must not
    assert len({soon.level(T0), late.level(T0), kv.level(T0)}) == 3


def test_llf_oracle_least_true_laxity_first():
    pol = make_policy("llf-oracle")  # 10, 25, 50, 100, 250 ms -> 0..5
    r = req(slo_ms=1000)
    tight = pol.entry(r, Stage("kv_fetch"), Flow(bytes=1, true_remaining_work_ns=980 * MS), T0)
    loose = pol.entry(r, Stage("kv_fetch"), Flow(bytes=1, true_remaining_work_ns=500 * MS), T0)
    assert tight.deadline_ns == T0 + 20 * MS and tight.ps_per_byte == 40_000
    assert (tight.level(T0), loose.level(T0)) == (1, 5)
    assert loose.level(T0 + 480 * MS) == 1  # 20 ms laxity left
    with pytest.raises(ValueError, match="true_remaining_work_ns"):
        pol.entry(r, Stage("p2d"), Flow(bytes=1), T0)
    est = make_policy("llf-oracle", allow_estimate=True).entry(
        req(remaining_bytes=1_000_000, remaining_compute_ns=60 * MS), Stage("p2d"), Flow(bytes=1), T0
    )
    assert est.deadline_ns == T0 + 900 * MS  # 1000 - 40 - 60


def test_squeezed_baselines_keep_their_order():
    for k in range(3, 9):
        pol = make_policy("sjf", nlevels=k)
        lv = [pol.entry(req(), Stage("p2d"), Flow(bytes=b), T0).level(T0) for b in (KiB, 100 * MiB)]
        assert lv[0] == 0 and lv[1] == k - 2
        ka = make_policy("karuna", nlevels=k).entry(req(), Stage("kv_fetch"), Flow(bytes=1), T0)
        assert ka.level(T0) >= 1
