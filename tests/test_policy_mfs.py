"""MFS and mfs-laxity: entries evaluated over time exactly as the kernel will (FlowEntry.level).

Reference rate 200 Mbit/s = 40 ns per byte (ps_per_byte 40000); every expected level below is
computed by hand from the default tables:
  MLU  (0.1, 0.25, 0.4, 0.6, 0.9) -> levels (5, 4, 3, 2, 1, 0)
  RLI  (1, 2, 3, 4, 8)            -> levels (1, 2, 3, 4, 5, 6)
  laxity (10, 25, 50, 100, 250) ms -> levels (0, 1, 2, 3, 4, 5)
"""

from __future__ import annotations

import pytest

from mfs_tc.layout import F_AUTO_SCAVENGE, F_MONOTONIC, MODE_LAXITY, MODE_MLU, MODE_RLI, MODE_STATIC, STAGE_CODES
from mfs_tc.model import Batch, Flow, Request, Stage
from mfs_tc.policy import make_policy, red, red_split

MS = 1_000_000
T0 = 10**12  # an arbitrary CLOCK_MONOTONIC instant


def kernel_walk(entry, times, **kw):
    """Levels a packet stream would get, carrying cur_level as the kernel does."""
    cur = 0xFF
    out = []
    for t in times:
        lv = entry.level(t, cur_level=cur, **kw)
        cur = lv
        out.append(lv)
    return out


# ---- p2d: MLU promotion ----------------------------------------------------------------------
def p2d_case():
    req = Request(request_id=7, arrival_ns=T0, slo_ns=1000 * MS)
    stage = Stage("p2d", bytes=1_000_000, compute_after_ns=10 * MS)  # decode step 10 ms
    flow = Flow(bytes=1_000_000)  # 40 ms at the reference rate
    return req, stage, flow


def test_p2d_entry_fields():
    req, stage, flow = p2d_case()
    e = make_policy("mfs").entry(req, stage, flow, T0)
    assert e.mode == MODE_MLU
    assert e.flags == F_MONOTONIC | F_AUTO_SCAVENGE
    assert e.deadline_ns == T0 + 990 * MS  # deadline - decode step
    assert e.ps_per_byte == 40_000
    assert e.total_bytes == 1_000_000
    assert (e.request_id, e.stage, e.created_ns) == (7, STAGE_CODES["p2d"], T0)
    assert e.levels == [5, 4, 3, 2, 1, 0]


def test_p2d_low_mlu_starts_deferred_and_is_promoted_as_deadline_nears():
    req, stage, flow = p2d_case()
    e = make_policy("mfs").entry(req, stage, flow, T0)
    # need 40 ms; p2d deadline T0 + 990 ms
    assert e.level(T0) == 5  # MLU 40/990 = 0.04: deferred, below every urgent level
    assert e.level(T0 + 790 * MS) == 4  # 40/200 = 0.2
    assert e.level(T0 + 860 * MS) == 3  # 40/130 = 0.31
    assert e.level(T0 + 900 * MS) == 2  # 40/90 = 0.44
    assert e.level(T0 + 930 * MS) == 1  # 40/60 = 0.67
    assert e.level(T0 + 950 * MS) == 0  # 40/40 = 1.0: needs the whole link now
    assert e.level(T0 + 951 * MS) == 7  # 40/39 > 1: cannot make it even alone: scavenger (auto)
    assert e.level(T0 + 951 * MS, sent=100_000) == 0  # ... unless it sent meanwhile: 36/39
    assert e.level(T0 + 990 * MS) == 7  # deadline passed: scavenger (auto)


def test_p2d_levels_only_rise_for_a_live_flow():
    req, stage, flow = p2d_case()
    e = make_policy("mfs").entry(req, stage, flow, T0)
    # 600 kB sent by T0+930ms: 400 kB left = 16 ms over 60 ms = 0.27 -> table says 3 ...
    assert e.level(T0 + 930 * MS, sent=600_000) == 3
    # ... but the flow was already at 1: monotonic keeps it there
    assert e.level(T0 + 930 * MS, sent=600_000, cur_level=1) == 1
    walk = kernel_walk(e, [T0 + t * MS for t in range(0, 951, 5)])
    assert walk == sorted(walk, reverse=True)
    assert walk[0] == 5 and walk[-1] == 0


def test_p2d_partially_sent_flow_keeps_its_count():
    req, stage, _ = p2d_case()
    e = make_policy("mfs").entry(req, stage, Flow(bytes=1_000_000, sent=500_000), T0 + 950 * MS)
    assert e.sent_bytes == 500_000
    # 500 kB left = 20 ms; 40 ms to the p2d deadline: MLU 0.5 -> level 2
    assert e.level(T0 + 950 * MS) == 2


# ---- kv_fetch / collective: RLI ---------------------------------------------------------------
def test_rli0_collective_outranks_deferred_p2d():
    pol = make_policy("mfs")
    req, stage, flow = p2d_case()
    p2d = pol.entry(req, stage, flow, T0)
    coll = pol.entry(req, Stage("collective", bytes=4_000_000, layer=3), Flow(bytes=1_000_000, target_layer=3), T0)
    assert coll.mode == MODE_RLI and coll.target_layer == 3 and coll.request_id == 7
    assert coll.flags == F_MONOTONIC
    assert coll.level(T0, cursor=3) == 1  # RLI 0: the GPU waits for it now (level 0: urgent p2d)
    assert p2d.level(T0) == 5
    assert coll.level(T0, cursor=3) < p2d.level(T0)


def test_far_layer_kv_fetch_waits_until_compute_approaches():
    pol = make_policy("mfs")
    req = Request(request_id=9, arrival_ns=T0, slo_ns=2000 * MS, num_layers=8)
    e = pol.entry(req, Stage("kv_fetch", bytes=1 << 20), Flow(bytes=1 << 20, target_layer=6), T0)
    assert e.mode == MODE_RLI and e.target_layer == 6
    # cursor -> RLI -> level: 0->6->5, 2->4->5, 3->3->4, 4->2->3, 5->1->2, 6->0->1
    assert [e.level(T0, cursor=c) for c in range(7)] == [5, 5, 5, 4, 3, 2, 1]
    # a fetch for a far layer sits with the deferred traffic, below every urgent level
    assert e.level(T0, cursor=0) >= 4


def test_stage_layer_is_used_when_the_flow_has_none():
    pol = make_policy("mfs")
    req = Request(request_id=9, arrival_ns=T0, slo_ns=2000 * MS)
    e = pol.entry(req, Stage("kv_fetch", layer=2), Flow(bytes=1000), T0)
    assert e.target_layer == 2


# ---- RED ---------------------------------------------------------------------------------------
def test_red_hand_values():
    assert red([500]) == 500
    assert red([300, 300, 300]) == 300  # no gap
    assert red_split([500, 100, 100, 500, 500, 500]) == ([100, 100], [500, 500, 500, 500])
    assert red([100, 100, 500, 500, 500, 500]) == (2 * 100 + 4 * 500) // 6 == 366
    # equal largest gaps: split at the earliest
    assert red_split([100, 200, 300]) == ([100], [200, 300])
    assert red([100, 110, 120, 130]) == (100 + 3 * 110) // 4 == 107
    with pytest.raises(ValueError, match="empty batch"):
        red([])


def batch_request(rid: int, deadlines_ms: list[int]) -> Request:
    b = Batch(batch_id=rid, deadlines_ns=[T0 + d * MS for d in deadlines_ms])
    return Request(request_id=rid, arrival_ns=T0, slo_ns=min(deadlines_ms) * MS, batch=b)


def test_red_ranks_few_tight_batch_below_uniformly_tight_one():
    pol = make_policy("mfs")  # red_loose 500 ms, shift 1
    few_tight = batch_request(1, [100, 100] + [2000] * 8)
    uniform = batch_request(2, [100, 110, 120, 130])
    # few tight: split after the 2 tight ones, f = 0.2: RED = 0.2*100 + 0.8*2000 = 1620 ms: loose
    assert red(few_tight.batch.deadlines_ns) == T0 + 1620 * MS
    # uniform: f = 1/4: RED = (100 + 3*110)/4 = 107.5 ms: tight
    assert red(uniform.batch.deadlines_ns) == T0 + 107_500_000
    assert pol.red_loose(few_tight, T0) and not pol.red_loose(uniform, T0)
    st, fl = Stage("collective"), Flow(bytes=1 << 20, target_layer=2)
    a = pol.entry(few_tight, st, fl, T0)
    b = pol.entry(uniform, st, fl, T0)
    assert a.levels == [2, 3, 4, 5, 6, 6] and b.levels == [1, 2, 3, 4, 5, 6]
    for cursor in (2, 1, 0):  # RLI 0, 1, 2
        assert a.level(T0, cursor=cursor) == b.level(T0, cursor=cursor) + 1
    # both min deadlines are 100 ms: plain EDF could not tell them apart; RED does


def test_red_shift_never_reaches_the_scavenger():
    pol = make_policy("mfs", red_shift=5)
    a = pol.entry(batch_request(1, [100] + [3000] * 9), Stage("kv_fetch"), Flow(bytes=1, target_layer=1), T0)
    assert max(a.levels) == 6


# ---- scavenger ---------------------------------------------------------------------------------
def test_infeasible_request_goes_to_scavenger():
    pol = make_policy("mfs")
    # 10 MB ahead = 400 ms at the ref rate, + 50 ms compute = 450 ms > 300 ms SLO
    req = Request(request_id=3, arrival_ns=T0, slo_ns=300 * MS, remaining_bytes=10_000_000, remaining_compute_ns=50 * MS)
    assert pol.is_hopeless(req, T0)
    for st in (Stage("p2d"), Stage("kv_fetch"), Stage("collective")):
        e = pol.entry(req, st, Flow(bytes=1000, target_layer=1), T0)
        assert e.mode == MODE_STATIC and e.levels == [7] and e.request_id == 3
        assert e.level(T0) == 7
    # with 200 ms benefit of the doubt it is still feasible (300 + 200 >= 450)
    assert not make_policy("mfs", hopeless_margin_ns=200 * MS).is_hopeless(req, T0)
    assert not make_policy("mfs", scavenger=False).is_hopeless(req, T0)


def test_feasible_request_becomes_hopeless_when_time_runs_out():
    pol = make_policy("mfs")
    # 1 MB (40 ms) + 50 ms compute = 90 ms of work
    req = Request(request_id=4, arrival_ns=T0, slo_ns=300 * MS, remaining_bytes=1_000_000, remaining_compute_ns=50 * MS)
    assert not pol.is_hopeless(req, T0)
    assert not pol.is_hopeless(req, T0 + 210 * MS)  # 90 ms left: exactly enough
    assert pol.is_hopeless(req, T0 + 211 * MS)


def test_scavenged_request_flag_overrides_rli_entry():
    pol = make_policy("mfs")
    req = Request(request_id=5, arrival_ns=T0, slo_ns=1000 * MS)
    e = pol.entry(req, Stage("kv_fetch"), Flow(bytes=10, target_layer=1), T0)
    assert e.level(T0, cursor=1) == 1  # RLI 0
    assert e.level(T0, cursor=1, scavenged=True) == 7  # the kernel reads the request flag
    req.scavenged = True
    assert pol.is_hopeless(req, T0)


def test_estimator_max_uses_the_flow_when_request_estimates_are_missing():
    req = Request(request_id=6, arrival_ns=T0, slo_ns=100 * MS)  # no estimates given
    flow = Flow(bytes=5_000_000)  # 200 ms at the ref rate
    assert make_policy("mfs").entry(req, Stage("p2d"), flow, T0).levels != [7]
    e = make_policy("mfs", estimator="max").entry(req, Stage("p2d"), flow, T0)
    assert e.levels == [7]


def test_fewer_levels_squeeze_the_layout():
    pol = make_policy("mfs", nlevels=4)
    req, stage, flow = p2d_case()
    e = pol.entry(req, stage, flow, T0)
    assert max(e.levels) <= 2 and e.levels[-1] == 0
    assert e.level(T0 + 990 * MS, nlevels=4, scavenger_level=3) == 3


# ---- mfs-laxity --------------------------------------------------------------------------------
def laxity_case():
    # W = 2 MB (80 ms) + 120 ms compute = 200 ms; deadline T0 + 1000 ms: base = T0 + 800 ms
    req = Request(request_id=11, arrival_ns=T0, slo_ns=1000 * MS, remaining_bytes=2_000_000, remaining_compute_ns=120 * MS)
    return req, Stage("p2d", compute_after_ns=10 * MS), Flow(bytes=1_000_000)


def test_laxity_entry_and_promotion():
    pol = make_policy("mfs-laxity")
    req, st, fl = laxity_case()
    e = pol.entry(req, st, fl, T0)
    assert e.mode == MODE_LAXITY and e.flags == F_MONOTONIC
    assert e.deadline_ns == T0 + 800 * MS and e.ps_per_byte == 40_000
    assert e.levels == [0, 1, 2, 3, 4, 5]
    assert e.level(T0) == 5  # L = 800 ms
    assert e.level(T0 + 600 * MS) == 4  # 200
    assert e.level(T0 + 720 * MS) == 3  # 80
    assert e.level(T0 + 760 * MS) == 2  # 40
    assert e.level(T0 + 780 * MS) == 1  # 20
    assert e.level(T0 + 795 * MS) == 0  # 5
    # sending at the ref rate gives laxity back: 1 MB = 40 ms -> L = 120 ms -> 4, unless monotonic
    assert e.level(T0 + 720 * MS, sent=1_000_000) == 4
    assert e.level(T0 + 720 * MS, sent=1_000_000, cur_level=3) == 3


def test_laxity_resent_flow_base_does_not_count_sent_bytes_twice():
    pol = make_policy("mfs-laxity")
    req, st, _ = laxity_case()
    e = pol.entry(req, st, Flow(bytes=1_000_000, sent=250_000), T0)
    assert e.deadline_ns == T0 + 800 * MS - 10 * MS  # 250 kB = 10 ms already counted by sent
    assert e.metric(T0) == 800 * MS


def test_laxity_hopeless_and_batch_red():
    pol = make_policy("mfs-laxity")
    req, st, fl = laxity_case()
    assert not pol.is_hopeless(req, T0 + 800 * MS)
    assert pol.is_hopeless(req, T0 + 801 * MS)
    assert pol.entry(req, st, fl, T0 + 801 * MS).levels == [7]
    breq = batch_request(12, [100, 100] + [2000] * 8)
    e = pol.entry(breq, Stage("kv_fetch"), Flow(bytes=1, target_layer=1), T0)
    assert e.deadline_ns == T0 + 1620 * MS  # RED, no work estimates given
    assert make_policy("mfs-laxity", use_red=False).entry(breq, Stage("kv_fetch"), Flow(bytes=1), T0).deadline_ns == T0 + 100 * MS
