"""The shared workload package: generation, routing, batching, plans, policy adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfs_tc.errors import MfsError
from mfs_tc.workload import (
    ClusterShape,
    ModelShape,
    RequestSpec,
    WorkloadConfig,
    default_trace_path,
    form_batch,
    generate,
    plan_batch,
    to_model_request,
)

TINY = ModelShape(
    name="tiny",
    layer_groups=2,
    kv_bytes_per_token_per_group=100.0,
    act_bytes_per_token_per_group=40.0,
    collective="all_reduce",
    compute_a_s=0.001,
    compute_b_s_per_token=1e-6,
    decode_step_s=0.002,
    block_tokens=10,
)


def _write_trace(tmp_path: Path) -> Path:
    lines = [
        {"timestamp": 0, "input_length": 30, "output_length": 5, "hash_ids": [1, 2, 3]},
        {"timestamp": 1000, "input_length": 35, "output_length": 5, "hash_ids": [1, 2, 4, 5]},
        {"timestamp": 3000, "input_length": 20, "output_length": 5, "hash_ids": [9, 1]},
        {"timestamp": 4000, "input_length": 25, "output_length": 5, "hash_ids": [1, 2, 4]},
    ]
    p = tmp_path / "trace.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return p


def test_trace_prefix_reuse_and_time_scale(tmp_path: Path) -> None:
    cfg = WorkloadConfig(
        trace_path=_write_trace(tmp_path), num_requests=4, model=TINY, byte_scale=1.0, time_scale=0.5, max_input_tokens=0
    )
    w = generate(cfg)
    assert [r.arrival_s for r in w.requests] == [0.0, 0.5, 1.5, 2.0]
    # leading run of already-seen blocks x block_tokens, capped at the input length
    assert [r.reused_tokens for r in w.requests] == [0, 20, 0, 25]
    assert [r.prefill_group for r in w.requests] == [0, 1, 0, 1]
    assert all(r.slo_s == pytest.approx(5.0 * r.unloaded_ttft_s) for r in w.requests)


def test_load_overrides_time_scale(tmp_path: Path) -> None:
    cfg = WorkloadConfig(trace_path=_write_trace(tmp_path), num_requests=4, model=TINY, load=3.0)
    w = generate(cfg)
    assert w.rate == pytest.approx(3.0)


def test_unloaded_ttft_by_hand() -> None:
    cl = ClusterShape(kv_hosts=1, prefill_groups=1, group_size=2, decode_hosts=1, link_rate_bps=8000.0)
    spec = RequestSpec(
        1,
        0.0,
        input_tokens=30,
        reused_tokens=10,
        output_tokens=1,
        prefill_group=0,
        decode_host="d0",
        kv_host="kv0",
        slo_s=1.0,
        unloaded_ttft_s=0.0,
    )
    plan = plan_batch([spec], TINY, cl)
    # 1000 B/s links. kv per layer: 10 tok x 100 B = 1000 B from kv0, 500 B to each rank: kv0's
    # uplink carries 1000 B -> 1 s per layer. compute 0.001 + 20e-6 s. collective: shard =
    # 20 x 40 / 2 = 400 B, ring sends 2 x 1/2 x 400 = 400 B per rank -> 0.4 s.
    # layer0: kv 1 s, compute ends 1.00102, coll ends 1.40102; layer1 kv ends 2.0 -> starts 2.0,
    # ends 2.40102. p2d 30 x 100 x 2 = 6000 B into d0: 6 s. + decode 0.002.
    c = 0.001 + 20e-6
    assert plan.ideal_ttft_s(cl.link_rate_bps)[1] == pytest.approx(2.0 + c + 0.4 + 6.0 + 0.002)
    assert [len(lp.kv_fetch) for lp in plan.layers] == [2, 2]
    assert plan.layers[0].collective[0].bytes == 400
    assert plan.total_bytes("p2d") == 6000


def test_moe_all_to_all_pairs() -> None:
    moe = ModelShape(
        name="m",
        layer_groups=1,
        kv_bytes_per_token_per_group=1.0,
        act_bytes_per_token_per_group=64.0,
        collective="all_to_all",
        compute_a_s=0.0,
        compute_b_s_per_token=0.0,
    )
    cl = ClusterShape(prefill_groups=1, group_size=4)
    spec = RequestSpec(1, 0.0, 100, 0, 1, 0, "d0", "kv0", 1.0, 0.0)
    coll = plan_batch([spec], moe, cl).layers[0].collective
    assert len(coll) == 12  # every ordered pair
    assert {t.bytes for t in coll} == {2 * 100 * 64 // 4 // 4}


def test_form_batch_rule() -> None:
    q = [RequestSpec(i, float(i), 100 * i, 0, 1, 0, "d0", "kv0", 1.0, 0.0) for i in range(1, 6)]
    assert [s.request_id for s in form_batch(q, 3)] == [1, 2, 3]
    assert [s.request_id for s in form_batch(q, 5, max_batch_tokens=350)] == [1, 2]
    assert [s.request_id for s in form_batch(q[3:], 5, max_batch_tokens=10)] == [4]
    with pytest.raises(ValueError, match="max_batch"):
        form_batch(q, 0)


def test_poisson_is_deterministic() -> None:
    a = generate(WorkloadConfig(kind="poisson", load=10.0, num_requests=50, seed=7))
    b = generate(WorkloadConfig(kind="poisson", load=10.0, num_requests=50, seed=7))
    c = generate(WorkloadConfig(kind="poisson", load=10.0, num_requests=50, seed=8))
    assert a.requests == b.requests != c.requests
    assert all(r.reused_tokens % 512 == 0 for r in a.requests)


def test_to_model_request_estimates() -> None:
    cl = ClusterShape(prefill_groups=1, group_size=2, link_rate_bps=8000.0)
    spec = RequestSpec(1, 0.0, 30, 10, 1, 0, "d0", "kv0", 0.5, 0.1)
    plan = plan_batch([spec], TINY, cl)
    # the critical path per bottleneck link (test_unloaded_ttft_by_hand's figures, 1000 B/s):
    # from layer 0, 2 s of kv_fetch + 0.4 s of collective + 6 s of p2d, less the compute
    # (0.001 + 20e-6 s) that overlaps layer 1's kv_fetch: 8.4 s - c of network = 8399 B at link
    # rate. The old estimate summed every byte over parallel links: 9600 B.
    c = 0.001 + 20e-6
    r0 = to_model_request(spec, 1_000, plan, link_rate_bps=cl.link_rate_bps)
    assert r0.deadline_ns == 1_000 + 500_000_000
    assert r0.remaining_bytes == round((8.4 - c) * 1000) < plan.total_bytes()
    assert r0.remaining_compute_ns == round((2 * c + 0.002) * 1e9)
    # W at the start is exactly the unloaded TTFT
    w = r0.remaining_bytes / 1000 + r0.remaining_compute_ns / 1e9
    assert w == pytest.approx(plan.ideal_ttft_s(cl.link_rate_bps)[1], abs=1e-3)
    # from layer 1: 1 s kv + c + 0.4 s collective, then 6 s of p2d
    r1 = to_model_request(spec, 1_000, plan, cursor=1, link_rate_bps=cl.link_rate_bps)
    assert r1.remaining_bytes == 7400
    assert r1.remaining_compute_ns == round((c + 0.002) * 1e9)


def test_bad_input_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        WorkloadConfig(kind="zipf")
    with pytest.raises(ValueError, match="load"):
        WorkloadConfig(kind="poisson")
    with pytest.raises(ValueError, match="dense-small"):
        WorkloadConfig(model="gpt-9")
    with pytest.raises(MfsError, match="--trace"):
        generate(WorkloadConfig(trace_path=tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x": 1}\n')
    with pytest.raises(MfsError, match="bad.jsonl:1"):
        generate(WorkloadConfig(trace_path=bad))


@pytest.mark.skipif(not default_trace_path().is_file(), reason="Mooncake trace not present")
def test_real_trace_default_workload() -> None:
    w = generate(WorkloadConfig(num_requests=300))
    assert len(w.requests) == 300
    assert any(r.reused_tokens > 0 for r in w.requests)
    # byte scale 1/32 (the default): the longest prompts (32k tokens) take about 3 s alone
    assert all(0 < r.unloaded_ttft_s < 4.0 for r in w.requests)
    arr = [r.arrival_s for r in w.requests]
    assert arr == sorted(arr)


def test_spread_bursts(tmp_path: Path) -> None:
    p = tmp_path / "burst.jsonl"
    lines = [{"timestamp": 0, "input_length": 10, "hash_ids": [i]} for i in range(5)]
    lines += [{"timestamp": 2000, "input_length": 10, "hash_ids": [9]}]
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    base = dict(trace_path=p, num_requests=6, model=TINY, max_input_tokens=0)
    flat = generate(WorkloadConfig(**base, spread_bursts=False))
    assert [r.arrival_s for r in flat.requests] == [0.0] * 5 + [2.0]
    spread = generate(WorkloadConfig(spread_bursts=True, **base))
    arr = [r.arrival_s for r in spread.requests]
    assert arr == sorted(arr) and arr[0] == 0.0 and arr[-1] == 2.0
    assert len(set(arr)) == 6 and all(0.0 <= a < 2.0 for a in arr[:5])
    assert generate(WorkloadConfig(spread_bursts=True, **base)).requests == spread.requests
