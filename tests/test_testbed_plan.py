"""Pure parts of the testbed (no root): run configuration, trace windows, work estimates,
the workload adapter's plans."""

from __future__ import annotations

import pytest

from mfs_tc.workload import trace_window
from netns_testbed.plan import BatchJob, LayerJob, RequestJob, Scenario, Transfer
from netns_testbed.replay import Replay
from netns_testbed.runner import RunConfig


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
    lay = LayerJob(kv_fetch=(Transfer("kv_fetch", "kv0", "p0r0", 1000),), compute_s=0.01,
                   collective=(Transfer("collective", "p0r0", "p0r1", 3000),))
    job = BatchJob(1, 0, (1, 2), (lay, lay),
                   {1: (Transfer("p2d", "p0r0", "d0", 500),), 2: ()}, 0.005)
    assert job.intended_bytes == 2 * 4000 + 500
    # the one estimator, per bottleneck link, 1000 B/s links: kv 1 s per layer on kv0's uplink,
    # collective 3 s on p0r0's uplink, compute 0.01 s. From layer 0: kv 1 s, compute, collective
    # (ends 4.01 s); layer 1's kv is already through: compute + collective (ends 7.02 s); then
    # request 1's p2d 0.5 s and the decode step. Network on the path: 7.5 s = 7500 B.
    rate = 8000.0
    e0, whole0 = Replay._estimates(job.work_plan(), 0, rate)
    e1, _ = Replay._estimates(job.work_plan(), 1, rate)
    e2, whole2 = Replay._estimates(job.work_plan(), 2, rate)
    assert e0 == {1: (7500, pytest.approx(0.025)), 2: (7000, pytest.approx(0.025))}
    assert whole0 == e0[1]  # the batch's path carries every member's p2d
    assert e1 == {1: (4500, pytest.approx(0.015)), 2: (4000, pytest.approx(0.015))}
    assert e2 == {1: (500, pytest.approx(0.005)), 2: (0, pytest.approx(0.005))}
    # the old estimate summed all bytes as if they crossed one link: 8500 B at layer 0
    assert e0[1][0] < job.intended_bytes
    assert whole2 == (500, pytest.approx(0.005))


def test_scenario_checks_ids_and_sorts_arrivals():
    a = RequestJob(2, 1.0, 1.0, 0)
    b = RequestJob(1, 0.5, 1.0, 0)
    sc = Scenario([a, b], lambda q: list(q[:1]), lambda *a: None)  # type: ignore[arg-type,return-value]
    assert [r.request_id for r in sc.requests] == [1, 2]
    with pytest.raises(ValueError, match="unique"):
        Scenario([a, RequestJob(2, 0.0, 1.0, 0)], lambda q: [], lambda *a: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="itself"):
        Transfer("p2d", "d0", "d0", 1)


def test_workload_adapter_plans_the_workloads_batches():
    from mfs_tc.workload import WorkloadConfig, generate, plan_batch
    from netns_testbed.workload_adapter import scenario_from_workload

    wl = generate(WorkloadConfig(num_requests=12, load=4.0))
    sc = scenario_from_workload(wl)
    assert len(sc.requests) == 12
    q = [r for r in sc.requests if r.prefill_group == 0]
    members = sc.batcher(q)
    assert 1 <= len(members) <= wl.cfg.max_batch
    job = sc.planner(7, 0, members)
    plan = plan_batch([m.spec for m in members], wl.model, wl.cluster)  # type: ignore[misc]
    assert job.batch_id == 7 and job.intended_bytes == plan.total_bytes()
    assert len(job.layers) == wl.model.layer_groups
    assert all(t.target_layer == g for g, lj in enumerate(job.layers) for t in lj.kv_fetch)
    assert all(t.stage == "p2d" for ts in job.p2d.values() for t in ts)
