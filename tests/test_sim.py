"""Flow-level simulator: fluid sharing and the engine on tiny cases with hand-computed answers."""

from __future__ import annotations

import pytest
from sim_workloads import P2D_ONLY, at_once

from mfs_tc.entry import FlowEntry
from mfs_tc.layout import MODE_LAXITY
from mfs_tc.model import Flow, Request, Stage
from mfs_tc.policy.base import Policy
from mfs_tc.sim.engine import simulate
from mfs_tc.sim.fabric import Fabric, Link
from mfs_tc.sim.fluid import FluidFlow, allocate
from mfs_tc.workload import ClusterShape, ModelShape, Workload, WorkloadConfig

# ---- fluid allocation ---------------------------------------------------------------------------


def _flow(fid: int, links: tuple[Link, ...], level: int = 0) -> FluidFlow:
    return FluidFlow(fid, links, 1000.0, level, 0.0)


def test_strict_priority_between_levels() -> None:
    ln = Link("l", 100.0)
    hi, lo = _flow(1, (ln,), 0), _flow(2, (ln,), 1)
    allocate({ln}, {hi, lo})
    assert (hi.rate, lo.rate) == (100.0, 0.0)


def test_max_min_with_different_bottlenecks() -> None:
    l1, l2 = Link("l1", 100.0), Link("l2", 30.0)
    x, y, z = _flow(1, (l1, l2)), _flow(2, (l1,)), _flow(3, (l1,))
    allocate({l1, l2}, {x, y, z})
    assert x.rate == pytest.approx(30.0)
    assert y.rate == pytest.approx(35.0) and z.rate == pytest.approx(35.0)


def test_lower_level_takes_leftover() -> None:
    l1, l2 = Link("l1", 100.0), Link("l2", 100.0)
    hi = _flow(1, (l1,), 0)
    lo_a, lo_b = _flow(2, (l1, l2), 3), _flow(3, (l2,), 3)
    allocate({l1, l2}, {hi, lo_a, lo_b})
    assert (hi.rate, lo_a.rate, lo_b.rate) == (100.0, 0.0, 100.0)


def test_leaf_spine_paths() -> None:
    fab = Fabric(["a", "b", "c", "d"], 8e9, hosts_per_rack=2, oversubscription=2.0)
    assert [ln.name for ln in fab.path("a", "b")] == ["a:up", "b:down"]
    p = fab.path("a", "c")
    assert [ln.name for ln in p] == ["a:up", "rack0:up", "rack1:down", "c:down"]
    assert p[1].capacity == pytest.approx(1e9)  # 2 hosts x 1 GB/s / 2
    with pytest.raises(ValueError, match="unknown host"):
        fab.path("a", "zz")


# ---- the engine on hand-built workloads ---------------------------------------------------------


def _workload(
    inputs: list[int], rate_bps: float, model: ModelShape = P2D_ONLY, group_size: int = 1, reused: int = 0, max_batch: int = 8
) -> Workload:
    return at_once(inputs, rate_bps, model=model, group_size=group_size, reused=reused, max_batch=max_batch)


class ById(Policy):
    """Static level = table[request_id] (0 if absent); a laxity entry for ids in `promote`: level
    `promote_from` until the time given, 0 after."""

    name = "by-id"

    def __init__(self, table: dict[int, int], promote: dict[int, int] | None = None, promote_from: int = 5) -> None:
        super().__init__()
        self.table = table
        self.promote = promote or {}
        self.promote_from = promote_from

    def entry(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> FlowEntry:
        rid = request.request_id
        if rid in self.promote:
            # level promote_from while base - now >= 0, level 0 after: a promotion at `base`
            return FlowEntry(
                mode=MODE_LAXITY,
                levels=[0, self.promote_from],
                thresholds=[0],
                deadline_ns=self.promote[rid],
                ps_per_byte=0,
                request_id=rid,
            )
        return FlowEntry.static(self.table.get(rid, 0), request_id=rid)


def _ttfts(res) -> dict[int, float]:
    return {r.request_id: r.ttft_s for r in res.requests}


def test_two_flows_strict_priority() -> None:
    # 1000 B/s; r1 1000 B at level 0, r2 500 B at level 1: r1 done at 1.0, r2 at 1.5
    w = _workload([1000, 500], 8000.0)
    res = simulate(w, ById({1: 0, 2: 1}))
    t = _ttfts(res)
    assert t[1] == pytest.approx(1.0 + 0.01)
    assert t[2] == pytest.approx(1.5 + 0.01)
    # the other way round
    t = _ttfts(simulate(w, ById({1: 1, 2: 0})))
    assert t[2] == pytest.approx(0.5 + 0.01) and t[1] == pytest.approx(1.5 + 0.01)


def test_three_flows_share_fairly() -> None:
    # 90 B/s shared by 300, 600, 900 B: 30 B/s each until 10 s, 45 B/s until 16.67 s, then 90
    w = _workload([300, 600, 900], 720.0)
    res = simulate(w, ById({}))
    t = _ttfts(res)
    assert t[1] == pytest.approx(10.0 + 0.01)
    assert t[2] == pytest.approx(10.0 + 300 / 45 + 0.01)
    assert t[3] == pytest.approx(20.0 + 0.01)
    assert res.level_bytes[0] == pytest.approx(1800.0)
    p = {r.request_id: r.p2d_earliness_s for r in res.requests}
    assert p[1] == pytest.approx(100.0 - 10.0)


def test_promotion_in_mid_flow() -> None:
    # r1 static level 1 (1000 B), r2 (500 B) at level 5 until 0.5 s, then promoted to level 0:
    # 0..0.5 r1 alone sends 500 B; 0.5..1.0 r2 at full rate; 1.0..1.5 r1 finishes.
    w = _workload([1000, 500], 8000.0)
    res = simulate(w, ById({1: 1}, promote={2: 500_000_000}), tick_s=0.001)
    t = _ttfts(res)
    assert t[2] == pytest.approx(1.0 + 0.01, abs=2e-3)
    assert t[1] == pytest.approx(1.5 + 0.01, abs=2e-3)
    assert res.level_bytes[1] == pytest.approx(1000.0)
    assert res.level_bytes[0] == pytest.approx(500.0, abs=2.0)


def test_a_starved_flows_promotion_waits_for_its_retransmission_timeout() -> None:
    # as above, with promotion_rto_s 0.2: r2 is starved from its start (0 s) behind r1, so its
    # promotion due at 0.5 s waits for a packet to carry it, TCP's timeouts at 0.2 s and then
    # 0.2 + 0.4 = 0.6 s: 0..0.6 r1 sends 600 B; 0.6..1.1 r2; 1.1..1.5 r1's last 400 B
    w = _workload([1000, 500], 8000.0)
    res = simulate(w, ById({1: 1}, promote={2: 500_000_000}), tick_s=0.001, promotion_rto_s=0.2)
    t = _ttfts(res)
    assert t[2] == pytest.approx(1.1 + 0.01, abs=2e-3)
    assert t[1] == pytest.approx(1.5 + 0.01, abs=2e-3)
    assert res.level_bytes[0] == pytest.approx(500.0, abs=2.0)
    with pytest.raises(ValueError, match="promotion_rto_s"):
        simulate(w, ById({}), promotion_rto_s=-0.1)


def test_a_starved_flows_promotion_lands_when_its_band_moves() -> None:
    # r1 550 B at level 1 ends at 0.55 s, before r2's next timeout (0.6 s): r2's band moves
    # then, and its first packet carries the promotion due since 0.5 s (all 500 B at level 0).
    # In the fluid ideal r2 preempts r1 at 0.5 s instead (r2 done at 1.0, r1 at 1.05).
    w = _workload([550, 500], 8000.0)
    lag = simulate(w, ById({1: 1}, promote={2: 500_000_000}), tick_s=0.001, promotion_rto_s=0.2)
    t = _ttfts(lag)
    assert t[1] == pytest.approx(0.55 + 0.01, abs=2e-3)
    assert t[2] == pytest.approx(1.05 + 0.01, abs=2e-3)
    assert lag.level_bytes[0] == pytest.approx(500.0, abs=2.0)
    ideal = _ttfts(simulate(w, ById({1: 1}, promote={2: 500_000_000}), tick_s=0.001))
    assert ideal[2] == pytest.approx(1.0 + 0.01, abs=2e-3)
    assert ideal[1] == pytest.approx(1.05 + 0.01, abs=2e-3)


def test_a_flow_with_a_rate_is_promoted_at_once() -> None:
    # r1 (500 B) at level 1 until 0.5 s, then level 0; r2 (3000 B) static at level 1: they
    # share the link (500 B/s each), so r1 is not starved and its promotion at 0.5 s lands at
    # once: its last 250 B alone at 1000 B/s, done at 0.75 s
    w = _workload([500, 3000], 8000.0)
    res = simulate(w, ById({2: 1}, promote={1: 500_000_000}, promote_from=1), tick_s=0.001, promotion_rto_s=0.2)
    assert _ttfts(res)[1] == pytest.approx(0.75 + 0.01, abs=2e-3)


def test_lone_request_matches_unloaded_ttft() -> None:
    # kv_fetch then compute per layer, no collective (G = 1): the simulator reproduces the
    # analytical unloaded TTFT when kv flows are served layer by layer (levels by layer)
    model = ModelShape(
        name="m",
        layer_groups=3,
        kv_bytes_per_token_per_group=10.0,
        act_bytes_per_token_per_group=0.0,
        collective="all_reduce",
        compute_a_s=0.05,
        compute_b_s_per_token=1e-4,
        decode_step_s=0.02,
    )

    class ByLayer(Policy):
        name = "by-layer"

        def entry(self, request, stage, flow, now_ns):
            return FlowEntry.static(min(flow.target_layer, 6))

    w = _workload([200], 80_000.0, model=model, reused=100)
    from mfs_tc.workload import unloaded_ttft_s

    expect = unloaded_ttft_s(w.requests[0], model, w.cluster)
    res = simulate(w, ByLayer())
    # 10 kB/s: kv 1000 B/layer = 0.1 s; compute 0.06 s; layers at 0.1, 0.2, 0.3 (kv-bound),
    # last compute ends 0.36; p2d 200 x 10 x 3 = 6000 B = 0.6 s; decode 0.02
    assert expect == pytest.approx(0.36 + 0.6 + 0.02)
    assert res.requests[0].ttft_s == pytest.approx(expect)
    assert res.requests[0].kv_fetch_s == pytest.approx(0.3)


def test_collective_and_group_busy() -> None:
    # two requests, max_batch 1: the second batch starts when the first's last collective ends
    model = ModelShape(
        name="m",
        layer_groups=2,
        kv_bytes_per_token_per_group=0.0,
        act_bytes_per_token_per_group=10.0,
        collective="all_reduce",
        compute_a_s=0.1,
        compute_b_s_per_token=0.0,
        decode_step_s=0.0,
    )
    w = _workload([100, 100], 8000.0, model=model, group_size=2, max_batch=1)
    res = simulate(w, ById({}))
    # shard = 100 x 10 / 2 = 500 B; ring: 500 B per rank pair at 1000 B/s = 0.5 s per layer
    a, b = res.requests
    assert res.ccts_s == pytest.approx([0.5, 0.5, 0.5, 0.5])
    assert a.ttft_s == pytest.approx(1.2)  # 2 x (0.1 + 0.5); no p2d bytes (kv bytes 0)
    assert b.queue_s == pytest.approx(1.2)
    assert b.ttft_s == pytest.approx(2.4)


def _reference_allocation(links: list[Link], flows: list[FluidFlow]) -> dict[int, float]:
    """Textbook progressive filling, level by level, no shortcuts."""
    resid = {ln.name: ln.capacity for ln in links}
    rate: dict[int, float] = {}
    for level in sorted({f.level for f in flows}):
        todo = [f for f in flows if f.level == level]
        while todo:
            share = min(resid[ln.name] / sum(1 for g in todo if ln in g.links) for f in todo for ln in f.links)
            share = max(share, 0.0)
            bott = {
                ln.name for f in todo for ln in f.links if resid[ln.name] / sum(1 for g in todo if ln in g.links) <= share + 1e-9
            }
            frozen = [f for f in todo if any(ln.name in bott for ln in f.links)]
            for f in frozen:
                rate[f.fid] = share
                for ln in f.links:
                    resid[ln.name] -= share
            todo = [f for f in todo if f not in frozen]
    return rate


def test_allocation_matches_reference_on_random_networks() -> None:
    import random

    rng = random.Random(5)
    for _ in range(200):
        links = [Link(f"l{i}", rng.choice([10.0, 25.0, 40.0, 100.0])) for i in range(rng.randint(2, 7))]
        paths = [tuple(rng.sample(links, rng.randint(1, min(3, len(links))))) for _ in range(5)]
        flows = [FluidFlow(i, rng.choice(paths), 1.0, rng.randint(0, 3), 0.0) for i in range(rng.randint(1, 12))]
        allocate(set(links), set(flows))
        ref = _reference_allocation(links, flows)
        for f in flows:
            assert f.rate == pytest.approx(ref[f.fid], rel=1e-9, abs=1e-9), (f, ref)
        for ln in links:  # no link over capacity
            assert sum(f.rate for f in flows if ln in f.links) <= ln.capacity * (1 + 1e-9)


def test_skipping_unchanged_levels_changes_nothing() -> None:
    from mfs_tc.sim.runner import make_sim_policy
    from mfs_tc.workload import generate

    w = generate(WorkloadConfig(kind="poisson", load=40.0, num_requests=60, seed=3, max_input_tokens=8192))
    cases = [(name, 0.0) for name in ("mfs", "mfs-laxity", "pias", "karuna", "srpt")] + [("mfs", 0.2), ("mfs-laxity", 0.2)]
    for name, rto in cases:
        runs = [
            simulate(
                w,
                make_sim_policy(name, nlevels=8, ref_rate_bps=w.cluster.link_rate_bps, config={}),
                skip_unchanged=skip,
                promotion_rto_s=rto,
            )
            for skip in (True, False)
        ]
        a, b = ([r.ttft_s for r in run.requests] for run in runs)
        assert a == pytest.approx(b, rel=1e-9), (name, rto)


def test_flow_setup_latency_delays_each_flow() -> None:
    w = _workload([1000, 500], 8000.0)
    t = _ttfts(simulate(w, ById({1: 0, 2: 1}), flow_setup_s=0.1))
    assert t[1] == pytest.approx(0.1 + 1.0 + 0.01)
    assert t[2] == pytest.approx(0.1 + 1.5 + 0.01)
    with pytest.raises(ValueError, match="flow_setup_s"):
        simulate(w, ById({}), flow_setup_s=-1.0)


@pytest.mark.parametrize("model,load", [("dense-70b", 12.0), ("moe-8x", 40.0)])
def test_group_aggregation_is_exact(model: str, load: float) -> None:
    from mfs_tc.sim.runner import make_sim_policy
    from mfs_tc.workload import generate

    w = generate(WorkloadConfig(kind="poisson", load=load, num_requests=80, model=model, cluster="c256", byte_scale=1.0))
    for name in ("mfs", "pias"):
        a, b = (
            simulate(w, make_sim_policy(name, nlevels=8, ref_rate_bps=w.cluster.link_rate_bps, config={}), aggregate_groups=agg)
            for agg in (False, True)
        )
        assert [r.ttft_s for r in b.requests] == pytest.approx([r.ttft_s for r in a.requests], rel=1e-9)
        assert b.flows < a.flows
        assert sum(b.level_bytes) == pytest.approx(sum(a.level_bytes), rel=1e-9)


def test_group_aggregation_refuses_straddling_racks() -> None:
    cl = ClusterShape(kv_hosts=1, prefill_groups=2, group_size=2, decode_hosts=1, hosts_per_rack=2)
    with pytest.raises(ValueError, match="straddle racks"):
        Fabric.for_cluster(cl, aggregate_groups=True)


# ---- network utilisation (sim.netutil) ----------------------------------------------------------


def test_link_meter_windows() -> None:
    from mfs_tc.sim.netutil import BINS, LinkMeter

    m = LinkMeter(1000.0, 0.01)
    m.set_rate(0.005, 500.0)  # half the link from 5 ms to 25 ms
    m.set_rate(0.025, 0.0)
    m.close(0.03)
    # windows [0,10) 0.25, [10,20) 0.5, [20,30) 0.25
    assert m.hist[BINS // 4] == 2 and m.hist[BINS // 2] == 1 and sum(m.hist) == 3


def test_net_util_per_link_class() -> None:
    # one 1000 B p2d flow at 1000 B/s: prefill uplink and decode downlink busy 1.0 s of 1.01 s
    w = _workload([1000], 8000.0)
    res = simulate(w, ById({}))
    nu = res.net_util
    assert set(nu) == {"kv_up", "kv_down", "prefill_up", "prefill_down", "decode_up", "decode_down"}
    for cls in ("prefill_up", "decode_down"):
        assert nu[cls]["mean"] == pytest.approx(1.0 / 1.01)
        assert nu[cls]["p99"] == pytest.approx(1.0)  # 100 busy windows of 101
        assert nu[cls]["links"] == 1
    assert nu["kv_up"]["mean"] == 0.0 and nu["kv_up"]["p99"] == 0.0
    assert nu["prefill_down"]["p99"] == 0.0


def test_net_util_leaf_spine_and_aggregated_groups() -> None:
    from mfs_tc.sim.runner import make_sim_policy
    from mfs_tc.workload import generate

    w = generate(WorkloadConfig(kind="poisson", load=12.0, num_requests=40, model="dense-70b", cluster="c256", byte_scale=1.0))

    def pol():
        return make_sim_policy("fair", nlevels=8, ref_rate_bps=w.cluster.link_rate_bps, config={})

    a, b = simulate(w, pol(), aggregate_groups=False), simulate(w, pol(), aggregate_groups=True)
    assert {"leaf_up", "leaf_down"} <= set(a.net_util)
    assert a.net_util["prefill_up"]["links"] == b.net_util["prefill_up"]["links"] == 24 * 8
    for cls, v in a.net_util.items():  # aggregation changes nothing here either
        assert b.net_util[cls]["mean"] == pytest.approx(v["mean"], rel=1e-6, abs=1e-12), cls
        assert b.net_util[cls]["p99"] == pytest.approx(v["p99"], abs=0.0051), cls
        assert 0.0 <= v["mean"] <= v["max_link_mean"] <= 1.0 + 1e-9


# ---- the compiled allocator against the reference ----------------------------------------------


def test_compiled_allocation_matches_python_on_random_networks() -> None:
    import random

    from mfs_tc.sim import waterfill

    assert waterfill.available(), "numba is a dependency (pyproject.toml)"
    rng = random.Random(11)
    for _ in range(200):
        links = [Link(f"l{i}", rng.choice([10.0, 25.0, 40.0, 100.0])) for i in range(rng.randint(2, 7))]
        paths = [tuple(rng.sample(links, rng.randint(1, min(3, len(links))))) for _ in range(5)]
        flows = [FluidFlow(i, rng.choice(paths), 1.0, rng.randint(0, 3), 0.0) for i in range(rng.randint(1, 12))]
        for f in flows:
            f.weight = rng.choice([1, 1, 2, 8])
        allocate(set(links), set(flows), allocator="python")
        ref = {f.fid: f.rate for f in flows}
        allocate(set(links), set(flows), allocator="numba")
        for f in flows:
            assert f.rate == pytest.approx(ref[f.fid], rel=1e-12, abs=1e-12), (f, ref)


@pytest.mark.parametrize(
    "model,cluster,load,n",
    [
        ("dense-small", "testbed", 3.0, 60),  # the testbed's workload (Poisson)
        ("qwen-72b", "c1024", 63.0, 150),  # the network-bound benchmark preset
        ("moe-8x", "c256", 40.0, 80),  # all-to-all, leaf-spine
        ("llama3-70b", "paper", 3.0, 60),  # one switch, hardware model
    ],
)
def test_compiled_allocator_same_ttfts_as_python(model: str, cluster: str, load: float, n: int) -> None:
    from mfs_tc.sim.runner import make_sim_policy
    from mfs_tc.workload import generate

    w = generate(
        WorkloadConfig(
            kind="poisson",
            load=load,
            num_requests=n,
            model=model,
            cluster=cluster,
            byte_scale=1.0 if cluster != "testbed" else 1 / 32,
        )
    )
    for name in ("mfs", "fair", "pias"):
        a, b = (
            simulate(
                w,
                make_sim_policy(name, nlevels=8, ref_rate_bps=w.cluster.link_rate_bps, config={}),
                aggregate_groups=True,
                allocator=alloc,
            )
            for alloc in ("python", "numba")
        )
        assert [r.ttft_s for r in b.requests] == pytest.approx([r.ttft_s for r in a.requests], rel=1e-9), (name, model)
        assert [r.met for r in b.requests] == [r.met for r in a.requests]
        assert sum(b.level_bytes) == pytest.approx(sum(a.level_bytes), rel=1e-9)


def test_unknown_allocator_is_one_clear_error() -> None:
    from mfs_tc.sim.fluid import FluidNetwork

    with pytest.raises(ValueError, match="unknown allocator 'fortran'.*python"):
        FluidNetwork(allocator="fortran")


def test_goodput_scales_the_fabric_only() -> None:
    w = _workload([1000], 8000.0)
    res = simulate(w, ById({}), goodput=0.5)
    assert res.requests[0].ttft_s == pytest.approx(2.0 + 0.01)  # 1000 B at 500 B/s of payload
    assert res.requests[0].slo_s == w.requests[0].slo_s  # the workload keeps the link rate
    with pytest.raises(ValueError, match="goodput"):
        simulate(w, ById({}), goodput=0.0)


def test_shared_band_queue_delays_only_flows_that_shared_it() -> None:
    # 1000 B/s shared by r1 (1000 B) and r2 (500 B) at one level: r2's last byte leaves at 1.0
    # s from a shared band and lands a 100 B queue (0.1 s) later; r1 finishes alone at 1.5 s
    w = _workload([1000, 500], 8000.0)
    t = _ttfts(simulate(w, ById({}), queue_bytes=100.0))
    assert t[2] == pytest.approx(1.0 + 0.1 + 0.01)
    assert t[1] == pytest.approx(1.5 + 0.01)
    t = _ttfts(simulate(w, ById({}), queue_bytes=100.0, allocator="python"))
    assert t[2] == pytest.approx(1.0 + 0.1 + 0.01) and t[1] == pytest.approx(1.5 + 0.01)
    with pytest.raises(ValueError, match="queue_bytes"):
        simulate(w, ById({}), queue_bytes=-1.0)


def test_load_for_utilisation_from_bytes_per_request() -> None:
    from mfs_tc.sim.netutil import load_for_utilisation, offered_link_s

    # requests of 1000 and 3000 B of p2d at 1000 B/s: 2 s of the decode downlink per request
    w = _workload([1000, 3000], 8000.0)
    busy = {ln.name: s for ln, s in offered_link_s(w).items()}
    assert busy == pytest.approx({"p0r0:up": 2.0, "d0:down": 2.0})
    load, link, cls, s = load_for_utilisation(w, 0.8)
    assert load == pytest.approx(0.4) and s == pytest.approx(2.0)
    assert (link, cls) in {("p0r0:up", "prefill_up"), ("d0:down", "decode_down")}
    with pytest.raises(ValueError, match="target utilisation"):
        load_for_utilisation(w, 1.5)


def test_array_state_follows_adds_removes_and_level_changes() -> None:
    """The compiled network (fluid state in arrays, grown as needed, swap-removed adjacency)
    against the python one, step by step through random adds, removes and level changes."""
    import random

    from mfs_tc.sim.fluid import FluidNetwork

    rng = random.Random(3)
    caps = [rng.choice([10.0, 25.0, 40.0, 100.0]) for _ in range(40)]
    shape = [tuple(rng.sample(range(40), rng.randint(1, 4))) for _ in range(30)]
    nets = []
    for alloc in ("python", "numba"):
        links = [Link(f"l{i}", c) for i, c in enumerate(caps)]
        nets.append((FluidNetwork(8, allocator=alloc), [tuple(links[i] for i in p) for p in shape], {}))
    t = 0.0
    for step in range(600):
        t += rng.random() * 0.05
        op = rng.random()
        live = sorted(nets[0][2])
        if op < 0.5 or not live:
            fid, p, lv, w = step, rng.randrange(30), rng.randrange(4), rng.choice([1, 2, 8])
            for net, paths, fl in nets:
                f = FluidFlow(fid, paths[p], 1e3, lv, t)
                f.weight = w
                fl[fid] = f
                net.add(f)
        elif op < 0.8:
            fid = rng.choice(live)
            for net, _, fl in nets:
                net.settle(fl[fid], t)
                net.remove(fl.pop(fid))
        else:
            fid, lv = rng.choice(live), rng.randrange(4)
            for net, _, fl in nets:
                net.set_level(fl[fid], lv, t)
        for net, _, _ in nets:
            net.recompute(t)
        (a, _, fa), (b, _, fb) = nets
        assert fa.keys() == fb.keys()
        for fid, f in fa.items():
            g = fb[fid]
            assert g.rate == pytest.approx(f.rate, rel=1e-9, abs=1e-9), (step, fid)
            a.settle(f, t)
            b.settle(g, t)
            assert g.rem == pytest.approx(f.rem, rel=1e-9, abs=1e-6), (step, fid)
    a.close_meters(t)
    b.close_meters(t)
    assert sum(b.level_bytes) == pytest.approx(sum(a.level_bytes), rel=1e-9)


def test_compiled_allocator_with_setup_latency_and_queue() -> None:
    # flows in their setup latency are re-asked (and re-levelled) before they reach the fabric
    from mfs_tc.sim.runner import make_sim_policy
    from mfs_tc.workload import generate

    w = generate(WorkloadConfig(kind="mooncake", num_requests=40, load=2.5))
    for name in ("mfs", "fair", "edf"):
        a, b = (
            simulate(
                w,
                make_sim_policy(name, nlevels=8, ref_rate_bps=w.cluster.link_rate_bps, config={}),
                aggregate_groups=True,
                allocator=alloc,
                flow_setup_s=0.006,
                goodput=1448 / 1514,
                queue_bytes=757e3,
            )
            for alloc in ("python", "numba")
        )
        assert [r.ttft_s for r in b.requests] == pytest.approx([r.ttft_s for r in a.requests], rel=1e-9), name


@pytest.mark.parametrize(
    "model,cluster,load,n",
    [
        ("dense-small", "testbed", 40.0, 60),  # batches of several requests, hopeless ones
        ("qwen-72b", "c1024", 63.0, 120),  # the benchmark preset: RED re-ranking
    ],
)
def test_entry_keys_keep_their_promise(model: str, cluster: str, load: float, n: int) -> None:
    """Policy.entry_key: wherever a re-ask keeps a flow's entry because its key did not change,
    the policy asked anyway gives an equal entry (check_entry_keys fails the run otherwise), for
    every policy; and keeping entries changes no TTFT."""
    from mfs_tc.policy.registry import POLICY_NAMES
    from mfs_tc.sim.runner import make_sim_policy
    from mfs_tc.workload import generate

    w = generate(
        WorkloadConfig(
            kind="poisson",
            load=load,
            num_requests=n,
            model=model,
            cluster=cluster,
            byte_scale=1.0 if cluster != "testbed" else 1 / 256,
            max_input_tokens=8192,
        )
    )
    for name in POLICY_NAMES:
        pol = make_sim_policy(name, nlevels=8, ref_rate_bps=w.cluster.link_rate_bps, config={})
        a = simulate(w, pol, aggregate_groups=True, check_entry_keys=True)
        b = simulate(w, pol, aggregate_groups=True, skip_unchanged=False)
        assert [r.ttft_s for r in a.requests] == pytest.approx([r.ttft_s for r in b.requests], rel=1e-9), name
