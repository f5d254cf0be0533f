"""mfs_tc.workload objects -> the testbed's Scenario (the same workload the simulator replays).

Batching is the workload's `form_batch` (oldest first, up to max_batch / max_batch_tokens) and
each batch's plan is the workload's `plan_batch`; this module only renames hosts and stages.
"""

from __future__ import annotations

from collections.abc import Sequence

from mfs_tc.workload import Workload, form_batch, plan_batch, request_estimate

from .plan import BatchJob, LayerJob, RequestJob, Scenario, Transfer


def _tr(stage: str, t: object, layer: int) -> Transfer:
    return Transfer(stage, t.src, t.dst, int(t.bytes), target_layer=layer)  # type: ignore[attr-defined]


def scenario_from_workload(wl: Workload) -> Scenario:
    model, cluster, cfg = wl.model, wl.cluster, wl.cfg
    jobs: list[RequestJob] = []
    for spec in wl.requests:
        solo = plan_batch([spec], model, cluster)
        nbytes, compute_ns = request_estimate(solo, spec.request_id, 0, cluster.link_rate_bps)
        jobs.append(RequestJob(
            request_id=spec.request_id, arrival_s=spec.arrival_s, slo_s=spec.slo_s,
            prefill_group=spec.prefill_group, unloaded_ttft_s=spec.unloaded_ttft_s,
            remaining_bytes=nbytes, num_layers=model.layer_groups,
            remaining_compute_s=compute_ns / 1e9, spec=spec))

    def batcher(queue: Sequence[RequestJob]) -> list[RequestJob]:
        by_spec = {id(j.spec): j for j in queue}
        taken = form_batch([j.spec for j in queue], cfg.max_batch, cfg.max_batch_tokens)  # type: ignore[misc]
        return [by_spec[id(s)] for s in taken]

    def planner(bid: int, group: int, members: Sequence[RequestJob]) -> BatchJob:
        plan = plan_batch([m.spec for m in members], model, cluster)  # type: ignore[misc]
        nl = len(plan.layers)
        layers = tuple(
            LayerJob(kv_fetch=tuple(_tr("kv_fetch", t, lp.layer) for t in lp.kv_fetch),
                     compute_s=lp.compute_s,
                     collective=tuple(_tr("collective", t, lp.layer) for t in lp.collective))
            for lp in plan.layers)
        p2d = {rid: tuple(_tr("p2d", t, nl) for t in ts) for rid, ts in plan.p2d.items()}
        return BatchJob(bid, plan.group, tuple(plan.members), layers, p2d, plan.decode_step_s)

    return Scenario(jobs, batcher, planner, name=f"{cfg.kind}", meta=wl.summary())
