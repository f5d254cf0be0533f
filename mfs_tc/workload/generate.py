"""`generate(cfg) -> Workload`: the request list both the testbed and the simulator replay.

Traces (`traces.py`: Mooncake JSONL, Splitwise/Azure CSV, detected from the content). Mooncake:
each trace line has `timestamp` (arrival, ms), `input_length`, `output_length` and `hash_ids`
(one hash per 512-token prefix block). A request reuses the longest leading run of its blocks
that earlier requests (earlier lines, including skipped ones) have already produced; those
tokens' KV is fetched from the KV store, the rest is computed. CSV traces have no hashes: reuse
follows `traces.ConversationReuse` (a seeded conversation model over the whole trace).
Poisson: exponential gaps at
`load` requests/s, input lengths from `input_dist`, `prefix_reuse` of each prompt (whole blocks)
reused, prefixes spread over the KV hosts at random. Deterministic for a given config and seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import MfsError
from .batching import plan_batch
from .config import WorkloadConfig
from .shapes import ClusterShape, ModelShape
from .spec import RequestSpec
from .traces import ConversationReuse, count_records, read_records, trace_format

_M64 = (1 << 64) - 1


def block_hash(block: int) -> int:
    """A fixed 64-bit mix (splitmix64) of a block id: KV host placement, stable across runs."""
    z = (block + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


@dataclass(slots=True)
class Workload:
    cfg: WorkloadConfig
    model: ModelShape  # byte_scale applied
    cluster: ClusterShape
    requests: list[RequestSpec]

    @property
    def duration_s(self) -> float:
        return self.requests[-1].arrival_s if self.requests else 0.0

    @property
    def rate(self) -> float:
        """Mean arrival rate (requests/s) over the workload."""
        d = self.duration_s
        return (len(self.requests) - 1) / d if d > 0 else float("inf")

    def by_id(self) -> dict[int, RequestSpec]:
        return {r.request_id: r for r in self.requests}

    def summary(self) -> dict[str, Any]:
        n = len(self.requests)
        trace: dict[str, Any] = {}
        if self.cfg.kind != "poisson":
            assert self.cfg.trace_path is not None  # WorkloadConfig.__post_init__ always sets it
            trace = {
                "trace": Path(self.cfg.trace_path).name,
                "trace_format": trace_format(self.cfg.trace_path),
                "trace_offset": self.cfg.trace_offset,
            }
        return {
            "kind": self.cfg.kind,
            **trace,
            "requests": n,
            "duration_s": self.duration_s,
            "rate_rps": self.rate if n > 1 else 0.0,
            "mean_input_tokens": sum(r.input_tokens for r in self.requests) / n,
            "mean_reused_tokens": sum(r.reused_tokens for r in self.requests) / n,
            "mean_unloaded_ttft_s": sum(r.unloaded_ttft_s for r in self.requests) / n,
            "model": self.model.name,
            "hosts": self.cluster.num_hosts,
            "link_rate_bps": self.cluster.link_rate_bps,
            "slo_scale": self.cfg.slo_scale,
            "seed": self.cfg.seed,
        }


@dataclass(frozen=True, slots=True)
class _Raw:
    t: float
    inp: int
    out: int
    reused: int
    key: int  # placement key of the reused prefix


def _read_trace(cfg: WorkloadConfig, block_tokens: int) -> list[_Raw]:
    assert cfg.trace_path is not None  # WorkloadConfig.__post_init__ always sets it
    path = Path(cfg.trace_path)
    reuse = ConversationReuse(block_tokens, cfg.conversation_continue)
    seen: set[int] = set()
    out: list[_Raw] = []
    for rec in read_records(path, cfg.trace_offset + cfg.num_requests):
        inp = rec.input_tokens
        if cfg.max_input_tokens and inp > cfg.max_input_tokens:
            inp = cfg.max_input_tokens
        if rec.hashes is not None:
            hashes = rec.hashes
            k = 0
            while k < len(hashes) and hashes[k] in seen:
                k += 1
            seen.update(hashes)
            reused = k * block_tokens
            key = hashes[k - 1] if k else 0
        else:
            reused, key = reuse.next(inp, rec.output_tokens)
        out.append(_Raw(rec.t_s, max(inp, 1), rec.output_tokens, min(reused, inp), key))
    out = out[cfg.trace_offset :]
    if not out:
        raise MfsError(f"{path}: no requests after offset {cfg.trace_offset}")
    t0 = out[0].t
    if cfg.load is not None:
        span = out[-1].t - t0
        scale = ((len(out) - 1) / span) / cfg.load if span > 0 and len(out) > 1 else 1.0
    else:
        scale = cfg.time_scale
    res = [replace(r, t=(r.t - t0) * scale) for r in out]
    if cfg.spread_bursts:
        res = _spread(res, random.Random(cfg.seed))
    return res


def _spread(raws: list[_Raw], rng: random.Random) -> list[_Raw]:
    """Requests sharing a timestamp spread uniformly over the gap to the next distinct one (the
    last burst over the mean gap); order within the trace is kept."""
    times = sorted({r.t for r in raws})
    if len(times) < 2:
        return raws
    nxt = dict(zip(times, times[1:], strict=False))
    mean_gap = (times[-1] - times[0]) / (len(times) - 1)
    out: list[_Raw] = []
    i = 0
    while i < len(raws):
        j = i
        while j < len(raws) and raws[j].t == raws[i].t:
            j += 1
        gap = nxt.get(raws[i].t, raws[i].t + mean_gap) - raws[i].t
        u = sorted(rng.random() for _ in range(j - i))
        out += [replace(r, t=r.t + (0.0 if k == 0 else u[k] * gap)) for k, r in enumerate(raws[i:j])]
        i = j
    return out


def _poisson(cfg: WorkloadConfig, block_tokens: int) -> list[_Raw]:
    rng = random.Random(cfg.seed)
    assert cfg.load is not None
    t = 0.0
    out: list[_Raw] = []
    mean = cfg.input_mean_tokens
    sigma = cfg.input_sigma
    mu = math.log(mean) - sigma * sigma / 2
    for _ in range(cfg.num_requests):
        if cfg.input_dist == "fixed":
            inp = mean
        elif cfg.input_dist == "exponential":
            inp = int(rng.expovariate(1.0 / mean))
        else:
            inp = int(rng.lognormvariate(mu, sigma))
        if cfg.max_input_tokens:
            inp = min(inp, cfg.max_input_tokens)
        inp = max(inp, 1)
        reused = int(cfg.prefix_reuse * inp) // block_tokens * block_tokens
        out.append(_Raw(t, inp, 0, reused, rng.getrandbits(32)))
        t += rng.expovariate(cfg.load)
    return out


def trace_window(path: Path, seed: int, n: int) -> int:
    """Trace offset of seed's window of `n` requests: seed 1 the first n requests, seed 2 the
    next n... (wrapping around within the trace). A trace has no randomness of its own, so the
    testbed and the simulator both let a seed pick a window. Any trace format (`traces.py`)."""
    span = max(1, count_records(Path(path)) - n)
    return ((max(seed, 1) - 1) * n) % span


def generate(cfg: WorkloadConfig) -> Workload:
    """The workload of `cfg`: requests sorted by arrival, routed, with SLOs."""
    cfg.validate()
    model = cfg.model_shape()
    cluster = cfg.cluster_shape()
    raws = _poisson(cfg, model.block_tokens) if cfg.kind == "poisson" else _read_trace(cfg, model.block_tokens)
    reqs: list[RequestSpec] = []
    for i, r in enumerate(raws):
        spec = RequestSpec(
            request_id=i + 1,
            arrival_s=r.t,
            input_tokens=r.inp,
            reused_tokens=r.reused,
            output_tokens=r.out,
            prefill_group=i % cluster.prefill_groups,
            decode_host=cluster.decode_host(i % cluster.decode_hosts),
            kv_host=cluster.kv_host(block_hash(r.key) % cluster.kv_hosts),
            slo_s=1.0,
            unloaded_ttft_s=0.0,
        )
        ttft = unloaded_ttft_s(spec, model, cluster)
        reqs.append(replace(spec, unloaded_ttft_s=ttft, slo_s=cfg.slo_scale * ttft))
    reqs.sort(key=lambda s: (s.arrival_s, s.request_id))
    return Workload(cfg=cfg, model=model, cluster=cluster, requests=reqs)


def unloaded_ttft_s(spec: RequestSpec, model: ModelShape, cluster: ClusterShape) -> float:
    """TTFT of `spec` alone on an idle cluster (a batch of one, stages at link rate)."""
    plan = plan_batch([spec], model, cluster)
    return plan.ideal_ttft_s(cluster.link_rate_bps)[spec.request_id]
