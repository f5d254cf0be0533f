"""Hand-made scenarios (no workload generator): the contention case of the acceptance test.

`contention`: two requests on two prefill groups of one rank each; after one short layer each
sends its KV cache (p2d) to the same decode host, whose switch port is the one bottleneck.
- The loose request arrives `tight_delay_s` first, so its transfer is already running (the
  incumbent), and ships `loose_factor` x `nbytes` over `loose_flows` parallel connections (a
  longer prompt over a multi-stream transfer). Its SLO is 4x the tight one's unloaded TTFT, which
  covers waiting for the tight one.
- The tight request ships `nbytes` over one connection; its SLO is 1.5x its unloaded TTFT.
Fair sharing is per flow, so the late tight transfer gets a fraction of the link and misses by a
wide margin (measured: 1.36 s against 0.74 s); a deadline-aware policy (MFS: higher MLU, promoted
first) serves it first and both meet their SLOs (tight 0.52 s, loose 1.51 s against 1.98 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mfs_tc.workload import BatchPlan, LayerPlan, RequestSpec, Transfer

from .plan import ReplayScenario, fifo_batcher
from .topology import TopologyConfig

CONTENTION_TIGHT = 1
CONTENTION_LOOSE = 2


def contention_topology(rate_bps: float = 100e6, prefix: str = "mfsb", **kw: Any) -> TopologyConfig:
    return TopologyConfig(kv_hosts=1, prefill_groups=2, group_size=1, decode_hosts=1, rate_bps=rate_bps, prefix=prefix, **kw)


def contention_scenario(
    rate_bps: float = 100e6,
    nbytes: int = 6_000_000,
    compute_s: float = 0.01,
    decode_step_s: float = 0.005,
    loose_flows: int = 3,
    tight_delay_s: float = 0.15,
    loose_factor: int = 2,
) -> ReplayScenario:
    alone_s = nbytes * 8 / rate_bps + compute_s + decode_step_s

    def spec(rid: int, arrival_s: float, slo_s: float, group: int) -> RequestSpec:
        # no tokens: the plan below is made by hand, not from a model's shape
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
            unloaded_ttft_s=alone_s,
        )

    reqs = [spec(CONTENTION_TIGHT, tight_delay_s, 1.5 * alone_s, 0), spec(CONTENTION_LOOSE, 0.0, 4.0 * alone_s, 1)]

    def plan(members: Sequence[RequestSpec]) -> BatchPlan:
        group = members[0].prefill_group
        src = f"p{group}r0"
        return BatchPlan(
            group=group,
            ranks=[src],
            members=[m.request_id for m in members],
            layers=[LayerPlan(layer=0, compute_s=compute_s)],
            p2d={
                m.request_id: (
                    _p2d(src, m.request_id, loose_factor * nbytes, loose_flows)
                    if m.request_id == CONTENTION_LOOSE
                    else _p2d(src, m.request_id, nbytes, 1)
                )
                for m in members
            },
            decode_step_s=decode_step_s,
        )

    def _p2d(src: str, rid: int, total: int, flows: int) -> list[Transfer]:
        sizes = [total // flows] * flows
        sizes[-1] += total - sum(sizes)
        return [Transfer(src, "d0", n, (rid,)) for n in sizes]

    return ReplayScenario(
        reqs,
        fifo_batcher(1),
        plan,
        link_rate_bps=rate_bps,
        name="contention",
        meta={"nbytes": nbytes, "alone_s": alone_s, "bytes_total": (1 + loose_factor) * nbytes},
    )
