"""Pure parts of the testbed (no root): run configuration, trace windows, work estimates,
the workload adapter's plans."""

from __future__ import annotations

import pytest

from netns_testbed.plan import BatchJob, LayerJob, RequestJob, Scenario, Transfer
from netns_testbed.replay import Replay
from mfs_tc.workload import trace_window
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
    e0 = Replay._estimates(job, 0, 0.02)
    e1 = Replay._estimates(job, 1, 0.01)
    e2 = Replay._estimates(job, 2, 0.005)
    assert e0 == {1: (4000 + 500, 0.02), 2: (4000, 0.02)}
    assert e1[1][0] == 2000 + 500 and e2 == {1: (500, 0.005), 2: (0, 0.005)}


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
