"""Fits of measured per-layer GPU operator times (Vidur's profiling CSVs) to the compute model.

Source: `../shared/vidur/profiling/compute/<gpu>/<org>/<model>/mlp.csv` (microsoft/vidur, MIT,
commit 7d47513363ec447a741ac5e47241580b47724fbf; read in place, never copied). Each row holds, for
`num_tokens` tokens in the batch on `num_tensor_parallel_workers` TP ranks, the times (ms) of one
transformer layer's non-attention operators. We use the `median` over repeats and split a layer
into two parts:

- attn side: input_layernorm, attn_pre_proj (QKV), attn_rope, attn_post_proj (O),
  post_attention_layernorm and two residual adds (`add` is timed once per row; a layer has two);
- mlp side: mlp_up_proj, mlp_act, mlp_down_proj.

The attention kernel itself (QK^T, softmax, PV) is not in these CSVs; `hardware.py` models it from
FLOPs. Each part is fitted to `a + b * N` (N = batch tokens) by least squares on the relative
error over the prefill range N >= FIT_MIN_TOKENS (below that the GEMMs are weight-read bound and
flat); `a` is clamped at >= 0. `floor_ms` is the part's measured time at N = 1 (the decode step's
per-layer cost). `python -m mfs_tc.workload.vidur` re-fits everything and prints the table that
`hardware.PROFILE_FITS` holds, with each fit's error.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import MfsError

FIT_MIN_TOKENS = 512
ATTN_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm", "add", "add")
MLP_OPS = ("mlp_up_proj", "mlp_act", "mlp_down_proj")
# (gpu, profiled model) -> path under profiling/compute/
PROFILES: dict[tuple[str, str], str] = {
    ("h100", "Qwen-72B"): "h100/Qwen/Qwen-72B",
    ("a100", "Qwen-72B"): "a100/Qwen/Qwen-72B",
    ("h100", "Llama-2-70b-hf"): "h100/meta-llama/Llama-2-70b-hf",
    ("h100", "Llama-2-7b-hf"): "h100/meta-llama/Llama-2-7b-hf",
    ("a100", "Meta-Llama-3-70B"): "a100/meta-llama/Meta-Llama-3-70B",
    ("a100", "Meta-Llama-3-8B"): "a100/meta-llama/Meta-Llama-3-8B",
}
_REPO = Path(__file__).resolve().parents[2]


def default_vidur_dir() -> Path:
    for cand in (Path("/work/shared/vidur"), _REPO.parent / "shared" / "vidur"):
        if (cand / "profiling").is_dir():
            return cand
    return Path("/work/shared/vidur")


@dataclass(frozen=True, slots=True)
class LinFit:
    a_ms: float
    b_ms_per_token: float

    def __call__(self, n: float) -> float:
        return self.a_ms + self.b_ms_per_token * n


@dataclass(frozen=True, slots=True)
class PartFit:
    """Fit of one (gpu, profiled model, tp): attn side, mlp side, and their N = 1 floors."""

    attn: LinFit
    mlp: LinFit
    attn_floor_ms: float
    mlp_floor_ms: float

    def layer_ms(self, n: float) -> float:
        return self.attn(n) + self.mlp(n)


@dataclass(frozen=True, slots=True)
class Points:
    """Measured per-layer times (ms) of one (gpu, model, tp), by num_tokens."""

    tokens: tuple[int, ...]
    attn_ms: tuple[float, ...]
    mlp_ms: tuple[float, ...]

    @property
    def layer_ms(self) -> tuple[float, ...]:
        return tuple(a + m for a, m in zip(self.attn_ms, self.mlp_ms, strict=False))


def load_points(gpu: str, model: str, tp: int, root: Path | None = None) -> Points:
    try:
        sub = PROFILES[(gpu, model)]
    except KeyError:
        raise MfsError(
            f"no Vidur profile for {model} on {gpu}: have " f"{', '.join(f'{m} ({g})' for g, m in PROFILES)}"
        ) from None
    path = (root or default_vidur_dir()) / "profiling" / "compute" / sub / "mlp.csv"
    if not path.is_file():
        raise MfsError(f"Vidur profile not found at {path}: point root= at the shared vidur folder")
    rows = []
    with path.open(newline="") as fh:
        for r in csv.DictReader(fh):
            if int(r["num_tensor_parallel_workers"]) != tp:
                continue

            def med(op: str) -> float:
                return float(r[f"time_stats.{op}.median"])  # noqa: B023 (used at once)

            rows.append((int(r["num_tokens"]), sum(med(o) for o in ATTN_OPS), sum(med(o) for o in MLP_OPS)))
    if not rows:
        raise MfsError(f"{path}: no rows for TP {tp}")
    rows.sort()
    return Points(tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows))


def fit_linear(xs: list[int] | tuple[int, ...], ys: list[float] | tuple[float, ...]) -> LinFit:
    """`a + b x` minimising the summed squared relative error, a >= 0."""
    w = [1.0 / (y * y) for y in ys]
    sw = sum(w)
    sx = sum(wi * x for wi, x in zip(w, xs, strict=False))
    sxx = sum(wi * x * x for wi, x in zip(w, xs, strict=False))
    sy = sum(wi * y for wi, y in zip(w, ys, strict=False))
    sxy = sum(wi * x * y for wi, x, y in zip(w, xs, ys, strict=False))
    det = sw * sxx - sx * sx
    b = (sw * sxy - sx * sy) / det
    a = (sy - b * sx) / sw
    if a < 0:
        a, b = 0.0, sxy / sxx
    return LinFit(a, b)


def fit(points: Points, min_tokens: int = FIT_MIN_TOKENS) -> PartFit:
    idx = [i for i, n in enumerate(points.tokens) if n >= min_tokens]
    xs = [points.tokens[i] for i in idx]
    floor = [i for i, n in enumerate(points.tokens) if n == min(points.tokens)]
    return PartFit(
        attn=fit_linear(xs, [points.attn_ms[i] for i in idx]),
        mlp=fit_linear(xs, [points.mlp_ms[i] for i in idx]),
        attn_floor_ms=sum(points.attn_ms[i] for i in floor) / len(floor),
        mlp_floor_ms=sum(points.mlp_ms[i] for i in floor) / len(floor),
    )


def rel_errors(points: Points, pred: Callable[[int], float], min_tokens: int = FIT_MIN_TOKENS) -> tuple[float, float, int]:
    """(max, mean) |pred(N) - measured| / measured of the layer time over N >= min_tokens, and
    the number of points."""
    errs = [abs(pred(n) - y) / y for n, y in zip(points.tokens, points.layer_ms, strict=False) if n >= min_tokens]
    return max(errs), sum(errs) / len(errs), len(errs)


def fit_all(root: Path | None = None) -> dict[tuple[str, str, int], tuple[PartFit, tuple[float, float, int]]]:
    out = {}
    for gpu, model in PROFILES:
        for tp in (1, 2, 4, 8):
            pts = load_points(gpu, model, tp, root)
            f = fit(pts)
            out[(gpu, model, tp)] = (f, rel_errors(pts, f.layer_ms))
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the fits as the Python literal of `hardware.PROFILE_FITS` and a markdown table."""
    fits = fit_all()
    print("PROFILE_FITS = {")
    for (gpu, model, tp), (f, _) in fits.items():
        print(
            f"    ({gpu!r}, {model!r}, {tp}): _pf({f.attn.a_ms:.6g}, {f.attn.b_ms_per_token:.6g}, "
            f"{f.mlp.a_ms:.6g}, {f.mlp.b_ms_per_token:.6g}, {f.attn_floor_ms:.6g}, "
            f"{f.mlp_floor_ms:.6g}),"
        )
    print("}\n")
    print(
        "| GPU | profiled model | TP | a (ms/layer) | b (us/token/layer) | floor N=1 (ms) | "
        "points | max / mean rel. err (N >= 512) | max / mean (N >= 1024) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    root = default_vidur_dir()
    for (gpu, model, tp), (f, (mx, mean, n)) in fits.items():
        mx2, mean2, _ = rel_errors(load_points(gpu, model, tp, root), f.layer_ms, 1024)
        print(
            f"| {gpu} | {model} | {tp} | {f.attn.a_ms + f.mlp.a_ms:.4f} | "
            f"{(f.attn.b_ms_per_token + f.mlp.b_ms_per_token) * 1e3:.4f} | "
            f"{f.attn_floor_ms + f.mlp_floor_ms:.4f} | {n} | {mx:.1%} / {mean:.1%} | "
            f"{mx2:.1%} / {mean2:.1%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
