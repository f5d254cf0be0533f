"""Batching and the per-batch transfer/compute plan, shared by the testbed and the simulator.

Batch rule (`form_batch`): first come, first served. A free prefill group takes the oldest
waiting requests routed to it, up to `max_batch` of them and, if `max_batch_tokens` > 0, while
the sum of their new (non-reused) tokens stays within it (the first request always goes).

Layer dependencies (DESIGN section 1), what `BatchPlan` encodes and both consumers obey:
- all kv_fetch flows of a batch (every layer group) start when the batch starts;
- layer g's compute starts when its kv_fetch flows have all ended and layer g-1's collective has
  ended (layer 0: the batch start);
- layer g's collective starts when its compute ends; layer g+1 waits for its slowest flow;
- after the last layer's collective each request's p2d flows start; the request's first token
  comes one decode step after its last p2d flow ends (TTFT = that time - arrival);
- the prefill group is busy from the batch start until the last layer's collective ends; p2d
  overlaps the group's next batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .shapes import ClusterShape, ModelShape
from .spec import RequestSpec


@dataclass(frozen=True, slots=True)
class Transfer:
    """Bytes from one host to another within one stage (one flow's worth)."""

    src: str
    dst: str
    bytes: int
    request_ids: tuple[int, ...] = ()


@dataclass(slots=True)
class LayerPlan:
    layer: int
    kv_fetch: list[Transfer] = field(default_factory=list)
    collective: list[Transfer] = field(default_factory=list)
    compute_s: float = 0.0


@dataclass(slots=True)
class BatchPlan:
    group: int
    ranks: list[str]
    members: list[int]  # request ids
    layers: list[LayerPlan]
    p2d: dict[int, list[Transfer]]  # request id -> its p2d transfers
    decode_step_s: float
    # stage times memoised by `layer_times` / `p2d_time` (a plan is not changed once made)
    _layer_times: dict[float, list[tuple[float, float]]] = field(default_factory=dict, repr=False, compare=False)
    _p2d_times: dict[tuple[int | None, float], float] = field(default_factory=dict, repr=False, compare=False)
    _path_times: dict[tuple[int, float], tuple[float, float]] = field(default_factory=dict, repr=False, compare=False)

    def layer_times(self, bytes_per_s: float) -> list[tuple[float, float]]:
        """Per layer: (`stage_time_s` of its kv_fetch, of its collective), computed once."""
        t = self._layer_times.get(bytes_per_s)
        if t is None:
            t = self._layer_times[bytes_per_s] = []
            kv: tuple[list[Transfer], float] | None = None
            coll: tuple[list[Transfer], float] | None = None
            for lp in self.layers:
                # a layer with the previous layer's transfers (plan_batch: every layer has the
                # same Transfer objects) has its times
                if kv is None or lp.kv_fetch != kv[0]:
                    kv = (lp.kv_fetch, stage_time_s(lp.kv_fetch, bytes_per_s))
                if coll is None or lp.collective != coll[0]:
                    coll = (lp.collective, stage_time_s(lp.collective, bytes_per_s))
                t.append((kv[1], coll[1]))
        return t

    def p2d_time(self, request_id: int | None, bytes_per_s: float) -> float:
        """`stage_time_s` of member `request_id`'s p2d (None: every member's), computed once."""
        key = (request_id, bytes_per_s)
        t = self._p2d_times.get(key)
        if t is None:
            trs = [tr for ts in self.p2d.values() for tr in ts] if request_id is None else self.p2d.get(request_id, [])
            t = self._p2d_times[key] = stage_time_s(trs, bytes_per_s)
        return t

    def total_bytes(self, stage: str | None = None) -> int:
        n = 0
        for lp in self.layers:
            if stage in (None, "kv_fetch"):
                n += sum(t.bytes for t in lp.kv_fetch)
            if stage in (None, "collective"):
                n += sum(t.bytes for t in lp.collective)
        if stage in (None, "p2d"):
            n += sum(t.bytes for ts in self.p2d.values() for t in ts)
        return n

    def compute_s(self) -> float:
        return sum(lp.compute_s for lp in self.layers)

    def ideal_ttft_s(self, link_rate_bps: float) -> dict[int, float]:
        """Per member: time from batch start to first token on an otherwise idle cluster, every
        stage's transfers at link rate (a stage takes its most loaded host link's bytes / rate;
        kv_fetch of layer g follows layer g-1's, as RLI ordering would have it; contention of
        kv_fetch with collectives on a rank's downlink is ignored). p2d of all members at once
        share links: each member's time is with every member's p2d in parallel."""
        bps = link_rate_bps / 8.0
        coll_done, _ = prefill_path_s(self, 0, bps)
        p2d_t = stage_time_s([t for ts in self.p2d.values() for t in ts], bps)
        return {rid: coll_done + p2d_t + self.decode_step_s for rid in self.members}


def stage_time_s(transfers: Sequence[Transfer], bytes_per_s: float) -> float:
    """Time for a set of concurrent transfers at link rate: their most loaded host link."""
    up: dict[str, int] = {}
    down: dict[str, int] = {}
    for t in transfers:
        up[t.src] = up.get(t.src, 0) + t.bytes
        down[t.dst] = down.get(t.dst, 0) + t.bytes
    if not up:
        return 0.0
    return max(max(up.values()), max(down.values())) / bytes_per_s


def prefill_path_s(plan: BatchPlan, cursor: int, bytes_per_s: float) -> tuple[float, float]:
    """(time until the last layer's collective ends, compute within it) from layer `cursor` on
    an idle network: kv_fetch of all layers queue on their link in layer order; layer g computes
    once its kv_fetch and layer g-1's collective are done; then its collective. Computed once
    per plan, cursor and rate."""
    key = (cursor, bytes_per_s)
    got = plan._path_times.get(key)
    if got is None:
        got = plan._path_times[key] = _prefill_path_s(plan, cursor, bytes_per_s)
    return got


def _prefill_path_s(plan: BatchPlan, cursor: int, bytes_per_s: float) -> tuple[float, float]:
    kv_done = 0.0
    coll_done = 0.0
    compute = 0.0
    times = plan.layer_times(bytes_per_s)
    for g in range(cursor, len(plan.layers)):
        lp = plan.layers[g]
        t_kv, t_coll = times[g]
        kv_done += t_kv
        start = max(kv_done, coll_done)
        coll_done = start + lp.compute_s + t_coll
        compute += lp.compute_s
    return coll_done, compute


def form_batch(queue: Sequence[RequestSpec], max_batch: int, max_batch_tokens: int = 0) -> list[RequestSpec]:
    """The next batch from `queue` (oldest first; the queue is not changed: the caller removes
    the members). See the module doc for the rule."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    out: list[RequestSpec] = []
    tokens = 0
    for spec in queue:
        if len(out) >= max_batch:
            break
        if out and max_batch_tokens and tokens + spec.new_tokens > max_batch_tokens:
            break
        out.append(spec)
        tokens += spec.new_tokens
    return out


def plan_batch(members: Sequence[RequestSpec], model: ModelShape, cluster: ClusterShape) -> BatchPlan:
    """Transfers and compute of a batch (bytes already scaled: pass `cfg.model_shape()`)."""
    if not members:
        raise ValueError("a batch needs at least one request")
    group = members[0].prefill_group
    if any(m.prefill_group != group for m in members):
        raise ValueError("all members of a batch must be routed to the same prefill group")
    G = cluster.group_size
    ranks = cluster.ranks(group)
    new = [m.new_tokens for m in members]
    ctx = [m.input_tokens for m in members]
    n_tokens = sum(new)
    layers: list[LayerPlan] = []
    # kv_fetch: per (kv host -> rank), summed over members fetching from that host
    kv_by_host: dict[str, tuple[float, list[int]]] = {}
    for m in members:
        if m.reused_tokens <= 0:
            continue
        b, ids = kv_by_host.get(m.kv_host, (0.0, []))
        kv_by_host[m.kv_host] = (b + m.reused_tokens * model.kv_bytes_per_token_per_group, ids + [m.request_id])
    compute = model.compute_s(new, ctx)
    shard = n_tokens * model.act_bytes_per_token_per_group / G
    coll: list[Transfer] = []
    if G > 1 and shard > 0:
        member_ids = tuple(m.request_id for m in members)
        if model.moe:
            per = int(round(2 * shard / G))
            coll = [Transfer(ranks[i], ranks[j], per, member_ids) for i in range(G) for j in range(G) if i != j and per > 0]
        else:
            per = int(round(2 * (G - 1) / G * shard))
            coll = [Transfer(ranks[i], ranks[(i + 1) % G], per, member_ids) for i in range(G) if per > 0]
    # every layer group fetches the same bytes per (kv host, rank): one set of (immutable)
    # Transfers, each layer its own list of them
    kv: list[Transfer] = []
    for host, (b, kv_ids) in kv_by_host.items():
        per = int(round(b / G))
        if per > 0:
            kv += [Transfer(host, r, per, tuple(kv_ids)) for r in ranks]
    for g in range(model.layer_groups):
        layers.append(LayerPlan(layer=g, kv_fetch=list(kv), collective=list(coll), compute_s=compute))
    p2d: dict[int, list[Transfer]] = {}
    for m in members:
        per = int(round(m.input_tokens * model.kv_bytes_per_token_per_group * model.layer_groups / G))
        p2d[m.request_id] = [Transfer(r, m.decode_host, per, (m.request_id,)) for r in ranks] if per > 0 else []
    return BatchPlan(
        group=group,
        ranks=ranks,
        members=[m.request_id for m in members],
        layers=layers,
        p2d=p2d,
        decode_step_s=model.decode_step_s,
    )
