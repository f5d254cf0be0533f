"""Hand-built simulator workloads the tests share: requests at t=0 on a one-group cluster whose
work is what a test spells out (by default only p2d: `P2D_ONLY`)."""

from __future__ import annotations

from mfs_tc.workload import ClusterShape, ModelShape, RequestSpec, Workload, WorkloadConfig

# one byte of KV per input token, no activations, no compute, a 10 ms decode step: a request's
# only work is its p2d of `input_tokens` bytes to the decode host
P2D_ONLY = ModelShape(
    name="p2d-only",
    layer_groups=1,
    kv_bytes_per_token_per_group=1.0,
    act_bytes_per_token_per_group=0.0,
    collective="all_reduce",
    compute_a_s=0.0,
    compute_b_s_per_token=0.0,
    decode_step_s=0.01,
)


def at_once(
    inputs: list[int],
    rate_bps: float,
    *,
    slo_s: float = 100.0,
    unloaded_s: float = 1.0,
    model: ModelShape = P2D_ONLY,
    group_size: int = 1,
    reused: int = 0,
    max_batch: int = 8,
) -> Workload:
    """One request per entry of `inputs` (its input tokens), ids 1.., all arriving at t=0, on
    1 KV host, 1 prefill group of `group_size` and 1 decode host with links of `rate_bps`."""
    cl = ClusterShape(kv_hosts=1, prefill_groups=1, group_size=group_size, decode_hosts=1, link_rate_bps=rate_bps)
    cfg = WorkloadConfig(
        kind="poisson", load=1.0, num_requests=len(inputs), model=model, cluster=cl, byte_scale=1.0, max_batch=max_batch
    )
    reqs = [
        RequestSpec(
            request_id=i + 1,
            arrival_s=0.0,
            input_tokens=n,
            reused_tokens=reused,
            output_tokens=1,
            prefill_group=0,
            decode_host="d0",
            kv_host="kv0",
            slo_s=slo_s,
            unloaded_ttft_s=unloaded_s,
        )
        for i, n in enumerate(inputs)
    ]
    return Workload(cfg=cfg, model=model, cluster=cl, requests=reqs)
