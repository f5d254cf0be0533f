"""Hand-made scenarios (no workload generator): the contention case of the acceptance test.

`contention`: two requests arrive together on two prefill groups of one rank each; after one
short layer each sends its KV cache (p2d, `nbytes`) to the same decode host, whose switch port
is the one bottleneck. The tight request's SLO leaves room for its own transfer alone (1.5x) but
not for sharing the link half and half (2x); the loose one has 4x. Fair sharing makes the tight
one miss; a deadline-aware policy (MFS: higher MLU, promoted first) serves it first and both
meet their SLOs.
"""

from __future__ import annotations

from collections.abc import Sequence

from .plan import BatchJob, LayerJob, RequestJob, Scenario, Transfer, fifo_batcher
from .topology import TopologyConfig

CONTENTION_TIGHT = 1
CONTENTION_LOOSE = 2


def contention_topology(rate_bps: float = 100e6, prefix: str = "mfsb", **kw: object) -> TopologyConfig:
    return TopologyConfig(kv_hosts=1, prefill_groups=2, group_size=1, decode_hosts=1,
                          rate_bps=rate_bps, prefix=prefix, **kw)  # type: ignore[arg-type]


def contention_scenario(rate_bps: float = 100e6, nbytes: int = 6_000_000,
                        compute_s: float = 0.01, decode_step_s: float = 0.005) -> Scenario:
    alone_s = nbytes * 8 / rate_bps + compute_s + decode_step_s
    reqs = [
        RequestJob(CONTENTION_TIGHT, 0.0, 1.5 * alone_s, prefill_group=0, unloaded_ttft_s=alone_s,
                   remaining_bytes=nbytes, remaining_compute_s=compute_s + decode_step_s),
        RequestJob(CONTENTION_LOOSE, 0.0, 4.0 * alone_s, prefill_group=1, unloaded_ttft_s=alone_s,
                   remaining_bytes=nbytes, remaining_compute_s=compute_s + decode_step_s),
    ]

    def plan(bid: int, group: int, members: Sequence[RequestJob]) -> BatchJob:
        src = f"p{group}r0"
        return BatchJob(
            batch_id=bid, group=group, request_ids=tuple(m.request_id for m in members),
            layers=(LayerJob(compute_s=compute_s),),
            p2d={m.request_id: (Transfer("p2d", src, "d0", nbytes, target_layer=1),)
                 for m in members},
            decode_step_s=decode_step_s,
        )

    return Scenario(reqs, fifo_batcher(1), plan, name="contention",
                    meta={"nbytes": nbytes, "alone_s": alone_s})
