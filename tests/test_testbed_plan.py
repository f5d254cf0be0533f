"""Pure parts of the testbed (no root): run configuration, trace windows, work estimates,
the workload adapter's plans."""

from __future__ import annotations

import pytest

from mfs_tc.workload import BatchPlan, LayerPlan, RequestSpec, Transfer, trace_window
from netns_testbed.plan import ReplayScenario, check_plan, fifo_batcher
from netns_testbed.replay import Replay
from netns_testbed.runner import RunConfig


def _spec(rid: int, arrival_s: float, slo_s: float = 1.0, group: int = 0) -> RequestSpec:
    return RequestSpec(
        rid,
        arrival_s,
        input_tokens=0,
        reused_tokens=0,
        output_tokens=1,
        prefill_group=group,
        decode_host="d0",
        kv_host="kv0",
        slo_s=slo_s,
        unloaded_ttft_s=0.0,
    )


def test_trace_window_moves_with_seed_and_wraps(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text("{}\n" * 100)
    assert trace_window(trace, 1, 30) == 0
    assert trace_window(trace, 2, 30) == 30
    assert trace_window(trace, 3, 30) == 60
    assert trace_window(trace, 4, 30) == 20  # (3 * 30) % 70


def test_run_config_names_bad_input():
    with pytest.raises(ValueError, match="unknown policy nope"):
        RunConfig(policies=["mfs", "nope"])
    with pytest.raises(ValueError, match="twice"):
        RunConfig(policies=["mfs", "mfs"])
    with pytest.raises(ValueError, match="requests"):
        RunConfig(num_requests=0)


def test_work_estimates_shrink_as_layers_complete():
    def layer(g: int) -> LayerPlan:
        return LayerPlan(g, kv_fetch=[Transfer("kv0", "p0r0", 1000)], compute_s=0.01, collective=[Transfer("p0r0", "p0r1", 3000)])

    plan = BatchPlan(0, ["p0r0", "p0r1"], [1, 2], [layer(0), layer(1)], {1: [Transfer("p0r0", "d0", 500)], 2: []}, 0.005)
    assert plan.total_bytes() == 2 * 4000 + 500
    # the one estimator, per bottleneck link, 1000 B/s links: kv 1 s per layer on kv0's uplink,
    # collective 3 s on p0r0's uplink, compute 0.01 s. From layer 0: kv 1 s, compute, collective
    # (ends 4.01 s); layer 1's kv is already through: compute + collective (ends 7.02 s); then
    # request 1's p2d 0.5 s and the decode step. Network on the path: 7.5 s = 7500 B.
    rate = 8000.0
    e0, whole0 = Replay._estimates(plan, 0, rate)
    e1, _ = Replay._estimates(plan, 1, rate)
    e2, whole2 = Replay._estimates(plan, 2, rate)
    assert e0 == {1: (7500, pytest.approx(0.025)), 2: (7000, pytest.approx(0.025))}
    assert whole0 == e0[1]  # the batch's path carries every member's p2d
    assert e1 == {1: (4500, pytest.approx(0.015)), 2: (4000, pytest.approx(0.015))}
    assert e2 == {1: (500, pytest.approx(0.005)), 2: (0, pytest.approx(0.005))}
    # the old estimate summed all bytes as if they crossed one link: 8500 B at layer 0
    assert e0[1][0] < plan.total_bytes()
    assert whole2 == (500, pytest.approx(0.005))


def _one_layer(members) -> BatchPlan:
    return BatchPlan(
        0,
        ["p0r0"],
        [m.request_id for m in members],
        [LayerPlan(0, compute_s=0.01)],
        {m.request_id: [Transfer("p0r0", "d0", 2500)] for m in members},
        0.005,
    )


def test_scenario_checks_ids_sorts_arrivals_and_estimates_each_request_alone():
    a, b = _spec(2, 1.0), _spec(1, 0.5)
    sc = ReplayScenario([a, b], fifo_batcher(1), _one_layer, link_rate_bps=8000.0)
    assert [r.request_id for r in sc.requests] == [1, 2]
    # alone: 0.01 s compute, then 2500 B of p2d at 1000 B/s, then the decode step
    est = sc.arrival_estimates[1]
    assert (est.remaining_bytes, est.num_layers) == (2500, 1)
    assert est.remaining_compute_s == pytest.approx(0.015)
    with pytest.raises(ValueError, match="unique"):
        ReplayScenario([a, _spec(2, 0.0)], fifo_batcher(1), _one_layer, link_rate_bps=8000.0)
    with pytest.raises(ValueError, match="SLO must be positive"):
        ReplayScenario([_spec(3, 0.0, slo_s=0.0)], fifo_batcher(1), _one_layer, link_rate_bps=8000.0)
    check_plan(_one_layer([a, b]))
    with pytest.raises(ValueError, match="request 1 p2d: transfer from d0 to itself"):
        check_plan(BatchPlan(0, ["d0"], [1], [], {1: [Transfer("d0", "d0", 1)]}, 0.0))


def test_workload_scenario_replays_the_workloads_batches():
    from mfs_tc.workload import WorkloadConfig, generate, plan_batch, request_estimate
    from netns_testbed.plan import scenario_from_workload

    wl = generate(WorkloadConfig(num_requests=12, load=4.0))
    sc = scenario_from_workload(wl)
    assert sc.requests == wl.requests
    q = [r for r in sc.requests if r.prefill_group == 0]
    members = sc.batcher(q)
    assert 1 <= len(members) <= wl.cfg.max_batch
    assert members == q[: len(members)]  # oldest first
    plan = sc.planner(members)
    assert plan == plan_batch(members, wl.model, wl.cluster)
    assert len(plan.layers) == wl.model.layer_groups
    # each request's estimate on arrival: its batch-of-one plan from layer 0, at the link rate
    r = sc.requests[0]
    solo = plan_batch([r], wl.model, wl.cluster)
    nbytes, compute_ns = request_estimate(solo, r.request_id, 0, wl.cluster.link_rate_bps)
    est = sc.arrival_estimates[r.request_id]
    assert (est.remaining_bytes, est.remaining_compute_s, est.num_layers) == (nbytes, compute_ns / 1e9, wl.model.layer_groups)
