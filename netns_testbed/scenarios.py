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

from .plan import BatchJob, LayerJob, RequestJob, Scenario, Transfer, fifo_batcher
from .topology import TopologyConfig

CONTENTION_TIGHT = 1
CONTENTION_LOOSE = 2


def contention_topology(rate_bps: float = 100e6, prefix: str = "mfsb", **kw: object) -> TopologyConfig:
    return TopologyConfig(kv_hosts=1, prefill_groups=2, group_size=1, decode_hosts=1,
                          rate_bps=rate_bps, prefix=prefix, **kw)  # type: ignore[arg-type]


def contention_scenario(rate_bps: float = 100e6, nbytes: int = 6_000_000,
                        compute_s: float = 0.01, decode_step_s: float = 0.005,
                        loose_flows: int = 3, tight_delay_s: float = 0.15,
                        loose_factor: int = 2) -> Scenario:
    alone_s = nbytes * 8 / rate_bps + compute_s + decode_step_s
    reqs = [
        RequestJob(CONTENTION_TIGHT, tight_delay_s, 1.5 * alone_s, prefill_group=0, unloaded_ttft_s=alone_s,
                   remaining_bytes=nbytes, remaining_compute_s=compute_s + decode_step_s),
        RequestJob(CONTENTION_LOOSE, 0.0, 4.0 * alone_s, prefill_group=1, unloaded_ttft_s=alone_s,
                   remaining_bytes=loose_factor * nbytes, remaining_compute_s=compute_s + decode_step_s),
    ]

    def plan(bid: int, group: int, members: Sequence[RequestJob]) -> BatchJob:
        src = f"p{group}r0"
        return BatchJob(
            batch_id=bid, group=group, request_ids=tuple(m.request_id for m in members),
            layers=(LayerJob(compute_s=compute_s),),
            p2d={m.request_id: (_p2d(src, loose_factor * nbytes, loose_flows) if m.request_id == CONTENTION_LOOSE
                                 else _p2d(src, nbytes, 1))
                 for m in members},
            decode_step_s=decode_step_s,
        )

    def _p2d(src: str, total: int, flows: int) -> tuple[Transfer, ...]:
        sizes = [total // flows] * flows
        sizes[-1] += total - sum(sizes)
        return tuple(Transfer("p2d", src, "d0", n, target_layer=1) for n in sizes)

    return Scenario(reqs, fifo_batcher(1), plan, name="contention",
                    meta={"nbytes": nbytes, "alone_s": alone_s,
                          "bytes_total": (1 + loose_factor) * nbytes})
