"""`generate(cfg) -> Workload`: the request list both the testbed and the simulator replay.

Mooncake: each trace line has `timestamp` (arrival, ms), `input_length`, `output_length` and
`hash_ids` (one hash per 512-token prefix block). A request reuses the longest leading run of its
blocks that earlier requests (earlier lines, including skipped ones) have already produced; those
tokens' KV is fetched from the KV store, the rest is computed. Poisson: exponential gaps at
`load` requests/s, input lengths from `input_dist`, `prefix_reuse` of each prompt (whole blocks)
reused, prefixes spread over the KV hosts at random. Deterministic for a given config and seed.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import MfsError
from .batching import plan_batch
from .config import WorkloadConfig
from .shapes import ClusterShape, ModelShape
from .spec import RequestSpec

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

    def summary(self) -> dict:
        n = len(self.requests)
        return {
            "kind": self.cfg.kind,
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


def _check_trace(path: Path) -> None:
    if not path.is_file():
        raise MfsError(
            f"Mooncake trace not found at {path}: pass --trace PATH (or trace_path=) pointing at "
            "mooncake_conversation_trace.jsonl, or use a poisson workload (--workload poisson)"
        )


def _read_trace(cfg: WorkloadConfig, block_tokens: int) -> list[_Raw]:
    path = Path(cfg.trace_path)
    _check_trace(path)
    seen: set[int] = set()
    out: list[_Raw] = []
    want = cfg.trace_offset + cfg.num_requests
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if len(out) >= want:
                break
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
                ts = float(rec["timestamp"]) / 1000.0
                inp = int(rec["input_length"])
                outl = int(rec.get("output_length", 0))
                hashes = [int(h) for h in rec.get("hash_ids", [])]
            except (ValueError, KeyError, TypeError) as exc:
                raise MfsError(f"{path}:{lineno}: not a Mooncake trace line ({exc})") from None
            k = 0
            while k < len(hashes) and hashes[k] in seen:
                k += 1
            seen.update(hashes)
            if cfg.max_input_tokens and inp > cfg.max_input_tokens:
                inp = cfg.max_input_tokens
            reused = min(k * block_tokens, inp)
            key = hashes[k - 1] if k else 0
            out.append(_Raw(ts, max(inp, 1), outl, reused, key))
    out = out[cfg.trace_offset:]
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
    nxt = dict(zip(times, times[1:]))
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
    """Trace offset of seed's window of `n` requests: seed 1 the first n lines, seed 2 the next
    n... (wrapping around within the trace). The trace has no randomness of its own, so the
    testbed and the simulator both let a seed pick a window."""
    _check_trace(Path(path))
    try:
        with open(path, "rb") as f:
            lines = sum(1 for _ in f)
    except OSError as exc:
        raise MfsError(f"cannot read the Mooncake trace {path}: {exc}") from exc
    span = max(1, lines - n)
    return ((max(seed, 1) - 1) * n) % span


def generate(cfg: WorkloadConfig) -> Workload:
    """The workload of `cfg`: requests sorted by arrival, routed, with SLOs."""
    cfg.validate()
    model = cfg.model_shape()
    cluster = cfg.cluster_shape()
    raws = _read_trace(cfg, model.block_tokens) if cfg.kind == "mooncake" else _poisson(cfg, model.block_tokens)
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
