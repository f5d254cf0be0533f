"""Model shapes from real model configs and measured GPU operator times (docs/hardware.md).

`HF_CONFIGS` holds the numbers of each model's Hugging Face `config.json` (field names as there).
`model_from_config(cfg, gpu, tp)` turns one into a `ModelShape`:

- KV bytes per token per layer = 2 (K, V) x num_key_value_heads x head_dim x dtype bytes;
- activation bytes per token per layer: dense, two tensor-parallel all-reduces (after attention
  and after the MLP) of hidden_size x dtype bytes each; MoE (expert parallel), dispatch and
  combine of the token's num_experts_per_tok expert copies of hidden_size x dtype bytes (the
  all-to-all rule of `batching.plan_batch` counts dispatch + combine from this figure);
- compute per layer `a + b N + c sum(n_i t_i)`: `a`, `b` from the Vidur fits in `PROFILE_FITS`
  (`vidur.py` fits and re-prints them), `c` from the attention kernel's FLOPs:
  4 x num_attention_heads x head_dim FLOPs per (query, key) pair (QK^T and PV, 2 FLOPs per
  multiply-add), x CAUSAL_PAIR_FACTOR, divided over the G ranks, at the achieved attention
  throughput `ATTN_FLOPS[gpu]`;
- decode step = num_hidden_layers x the profiled per-layer time at one token (N = 1).

Dense models run tensor parallel over the G ranks of a prefill group (the profile of TP G).
MoE models run expert parallel over the G ranks with sequence-parallel attention (each rank
holds the attention weights and 1/G of the batch's tokens, and num_local_experts / G experts);
per layer and rank: attn_TP1(N / G) + (E / G) x a_mlp + top_k x b_mlp x N / G, from the TP-1
profile of a dense model whose MLP has the expert's shape.

A profiled model whose layer shapes differ from the target's is scaled: the attn side by the
ratio of the attention projections' weights (hidden x (q + 2 kv) x head_dim + O), the mlp side by
the ratio of one (active) expert's MLP weights (3 x hidden x intermediate, gated). For identical
shapes the ratio is 1 (Llama-2-70B and Llama-3-70B have the same layer shapes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .shapes import ModelShape
from .vidur import LinFit, PartFit

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float8": 1}
GPUS = ("h100", "a100")
TP_DEGREES = (1, 2, 4, 8)
# Achieved attention-kernel throughput in prefill (FLOP/s), FlashAttention-2 class kernels as in
# vLLM at the time of Vidur's profiling: FlashAttention-2 (Dao 2023) reaches 50-73% of the A100's
# 312 TFLOP/s bf16 peak in the forward pass (we take 190, ~61%); FlashAttention-3 (Shah et al.
# 2024) reports FlashAttention-2 at ~35% of the H100 SXM's 989 TFLOP/s (we take 350).
ATTN_FLOPS = {"h100": 350e12, "a100": 190e12}
# Causal prefill of n new tokens over a context of t tokens computes n t - n^2 / 2 pairs: n t / 2
# for a fresh prompt, ~n t when most of the context is a reused prefix. The compute model counts
# c x n t; we take the midpoint 0.75 (error <= 1/3 on the attention term either way).
CAUSAL_PAIR_FACTOR = 0.75
DEFAULT_LAYER_GROUPS = 8
DEFAULT_TP = 8


@dataclass(frozen=True, slots=True)
class HFConfig:
    """The config.json fields we use; `source` is the Hugging Face repo they come from."""

    name: str
    source: str
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int  # the per-branch MLP width (see Qwen-72B's note)
    torch_dtype: str = "bfloat16"
    head_dim: int = 0  # 0: hidden_size / num_attention_heads
    num_local_experts: int = 0  # 0: dense
    num_experts_per_tok: int = 0
    note: str = ""

    @property
    def head_dim_(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def dtype_bytes(self) -> int:
        try:
            return DTYPE_BYTES[self.torch_dtype]
        except KeyError:
            raise ValueError(
                f"model {self.name}: unknown torch_dtype {self.torch_dtype!r}: " f"one of {', '.join(DTYPE_BYTES)}"
            ) from None

    @property
    def moe(self) -> bool:
        return self.num_local_experts > 0

    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        return 2 * self.num_key_value_heads * self.head_dim_ * self.dtype_bytes

    @property
    def act_bytes_per_token_per_layer(self) -> int:
        per = self.hidden_size * self.dtype_bytes
        return self.num_experts_per_tok * per if self.moe else 2 * per

    @property
    def attn_weights(self) -> int:
        """QKV and O projection weights of one layer (elements)."""
        d = self.head_dim_
        qkv = self.hidden_size * (self.num_attention_heads + 2 * self.num_key_value_heads) * d
        return qkv + self.num_attention_heads * d * self.hidden_size

    @property
    def mlp_weights(self) -> int:
        """One (active) expert's gated MLP weights (up, gate, down) of one layer (elements)."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def attn_flops_per_pair(self) -> int:
        """Attention-kernel FLOPs of one layer per (query, key) token pair: QK^T and PV."""
        return 4 * self.num_attention_heads * self.head_dim_


# config.json numbers (Hugging Face). Qwen-72B is Qwen/Qwen-72B (Qwen 1, the model Vidur
# profiled; multi-head attention: its config has no num_key_value_heads, kv_channels = 128 is the
# head dim; its `intermediate_size` 49152 counts both gate branches, each w1/w2 is 24576 wide,
# as Vidur's n_expanded_embd = 24576 confirms).
HF_CONFIGS: dict[str, HFConfig] = {
    "qwen-72b": HFConfig(
        name="qwen-72b",
        source="Qwen/Qwen-72B",
        num_hidden_layers=80,
        hidden_size=8192,
        num_attention_heads=64,
        num_key_value_heads=64,
        head_dim=128,
        intermediate_size=24576,
        torch_dtype="bfloat16",
        note="config.json: intermediate_size 49152 (= 2 x 24576), kv_channels 128, no GQA",
    ),
    "llama3-70b": HFConfig(
        name="llama3-70b",
        source="meta-llama/Meta-Llama-3-70B",
        num_hidden_layers=80,
        hidden_size=8192,
        num_attention_heads=64,
        num_key_value_heads=8,
        intermediate_size=28672,
        torch_dtype="bfloat16",
    ),
    "llama3-8b": HFConfig(
        name="llama3-8b",
        source="meta-llama/Meta-Llama-3-8B",
        num_hidden_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        torch_dtype="bfloat16",
    ),
    "mixtral-8x7b": HFConfig(
        name="mixtral-8x7b",
        source="mistralai/Mixtral-8x7B-v0.1",
        num_hidden_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        torch_dtype="bfloat16",
        num_local_experts=8,
        num_experts_per_tok=2,
    ),
}

# Layer shapes of the profiled models, from the CSVs' n_head, n_kv_head, n_embd, n_expanded_embd
# (tests/test_hardware.py checks them against the files).
PROFILE_SHAPES: dict[str, HFConfig] = {
    "Qwen-72B": HFConfig("Qwen-72B", "vidur", 80, 8192, 64, 64, 24576),
    "Llama-2-70b-hf": HFConfig("Llama-2-70b-hf", "vidur", 80, 8192, 64, 8, 28672),
    "Llama-2-7b-hf": HFConfig("Llama-2-7b-hf", "vidur", 32, 4096, 32, 32, 11008),
    "Meta-Llama-3-70B": HFConfig("Meta-Llama-3-70B", "vidur", 80, 8192, 64, 8, 28672),
    "Meta-Llama-3-8B": HFConfig("Meta-Llama-3-8B", "vidur", 32, 4096, 32, 8, 14336),
}

# Which profile stands for which model on which GPU (the model itself where Vidur profiled it).
PROFILE_OF: dict[tuple[str, str], str] = {
    ("qwen-72b", "h100"): "Qwen-72B",
    ("qwen-72b", "a100"): "Qwen-72B",
    ("llama3-70b", "h100"): "Llama-2-70b-hf",  # same layer shapes as Llama-3-70B
    ("llama3-70b", "a100"): "Meta-Llama-3-70B",
    ("llama3-8b", "h100"): "Llama-2-7b-hf",  # scaled: MHA 32 KV heads, MLP 11008
    ("llama3-8b", "a100"): "Meta-Llama-3-8B",
    ("mixtral-8x7b", "h100"): "Llama-2-7b-hf",  # scaled; experts composed as in the module doc
    ("mixtral-8x7b", "a100"): "Meta-Llama-3-8B",  # its MLP is Mixtral's expert shape
}


def _pf(aa: float, ba: float, am: float, bm: float, fa: float, fm: float) -> PartFit:
    return PartFit(LinFit(aa, ba), LinFit(am, bm), fa, fm)


# Printed by `python -m mfs_tc.workload.vidur` (per layer, ms and ms/token; attn side, mlp side,
# N = 1 floors). tests/test_hardware.py re-fits the CSVs and checks these numbers and the errors.
PROFILE_FITS: dict[tuple[str, str, int], PartFit] = {
    ("h100", "Qwen-72B", 1): _pf(0.174443, 0.00087434, 0.296921, 0.00174858, 0.209, 0.431),
    ("h100", "Qwen-72B", 2): _pf(0.0927588, 0.000460154, 0.17645, 0.000825567, 0.117, 0.215),
    ("h100", "Qwen-72B", 4): _pf(0.05196, 0.000271746, 0.124411, 0.000375901, 0.071, 0.113),
    ("h100", "Qwen-72B", 8): _pf(0.0233873, 0.000180486, 0.0794875, 0.000184941, 0.051, 0.06),
    ("a100", "Qwen-72B", 1): _pf(0.290081, 0.00248223, 0.505086, 0.00520707, 0.373, 0.7755),
    ("a100", "Qwen-72B", 2): _pf(0.151142, 0.00133743, 0.301444, 0.00257662, 0.196, 0.377),
    ("a100", "Qwen-72B", 4): _pf(0.032808, 0.000786713, 0.135482, 0.00128903, 0.116, 0.197),
    ("a100", "Qwen-72B", 8): _pf(0.00473335, 0.000465938, 0.0376075, 0.000671355, 0.08, 0.105),
    ("h100", "Llama-2-70b-hf", 1): _pf(0.096412, 0.000530497, 0.344616, 0.00201623, 0.129, 0.497),
    ("h100", "Llama-2-70b-hf", 2): _pf(0.0365335, 0.000311324, 0.221103, 0.000941938, 0.076, 0.245),
    ("h100", "Llama-2-70b-hf", 4): _pf(0.0252136, 0.000196405, 0.132139, 0.000447124, 0.053, 0.128),
    ("h100", "Llama-2-70b-hf", 8): _pf(0.0194722, 0.000141069, 0.0984938, 0.000210151, 0.038, 0.0675),
    ("h100", "Llama-2-7b-hf", 1): _pf(0.0444302, 0.000237088, 0.0769014, 0.000376776, 0.068, 0.108),
    ("h100", "Llama-2-7b-hf", 2): _pf(0.0321206, 0.000138815, 0.0610086, 0.000180475, 0.042, 0.059),
    ("h100", "Llama-2-7b-hf", 4): _pf(0.0216323, 9.32371e-05, 0.0282567, 9.9852e-05, 0.032, 0.0325),
    ("h100", "Llama-2-7b-hf", 8): _pf(0.0171893, 6.96028e-05, 0.0227774, 5.22091e-05, 0.023, 0.019),
    ("a100", "Meta-Llama-3-70B", 1): _pf(0.230808, 0.00144835, 0.511499, 0.00625006, 0.2275, 0.8935),
    ("a100", "Meta-Llama-3-70B", 2): _pf(0.0716253, 0.000849168, 0.304991, 0.0030746, 0.128, 0.441),
    ("a100", "Meta-Llama-3-70B", 4): _pf(0.0226402, 0.000506506, 0.159903, 0.00150647, 0.081, 0.232),
    ("a100", "Meta-Llama-3-70B", 8): _pf(0.00801381, 0.000329552, 0.050576, 0.000773824, 0.0555, 0.125),
    ("a100", "Meta-Llama-3-8B", 1): _pf(0.0270866, 0.000496318, 0.148829, 0.00160012, 0.076, 0.229),
    ("a100", "Meta-Llama-3-8B", 2): _pf(5.49758e-05, 0.000287889, 0.0242264, 0.000829493, 0.051, 0.128),
    ("a100", "Meta-Llama-3-8B", 4): _pf(0.00817058, 0.00017717, 0.0253572, 0.00040774, 0.04, 0.068),
    ("a100", "Meta-Llama-3-8B", 8): _pf(0.00888728, 0.000127355, 0.0163932, 0.000203082, 0.03, 0.037),
}


def scaled_fit(fit: PartFit, attn_ratio: float, mlp_ratio: float) -> PartFit:
    return PartFit(
        LinFit(fit.attn.a_ms * attn_ratio, fit.attn.b_ms_per_token * attn_ratio),
        LinFit(fit.mlp.a_ms * mlp_ratio, fit.mlp.b_ms_per_token * mlp_ratio),
        fit.attn_floor_ms * attn_ratio,
        fit.mlp_floor_ms * mlp_ratio,
    )


def fit_for(cfg: HFConfig, profiled: HFConfig, fit: PartFit) -> PartFit:
    """`fit` of the `profiled` layer shape carried over to `cfg`'s shape (module doc)."""
    return scaled_fit(fit, cfg.attn_weights / profiled.attn_weights, cfg.mlp_weights / profiled.mlp_weights)


@dataclass(frozen=True, slots=True)
class LayerCompute:
    """One layer on one prefill group: ms, ms per token, s per token pair, decode ms."""

    a_ms: float
    b_ms_per_token: float
    c_s_per_pair: float
    decode_ms: float


def layer_compute(cfg: HFConfig, gpu: str, tp: int, fits: dict[tuple[str, str, int], PartFit] | None = None) -> LayerCompute:
    gpu = gpu.lower()
    if gpu not in GPUS:
        raise ValueError(f"model {cfg.name}: unknown GPU {gpu!r}: choose one of {', '.join(GPUS)}")
    if tp not in TP_DEGREES:
        raise ValueError(
            f"model {cfg.name}: TP degree {tp} not profiled: choose one of "
            f"{', '.join(map(str, TP_DEGREES))} (the cluster's group_size)"
        )
    fits = PROFILE_FITS if fits is None else fits
    try:
        prof_name = PROFILE_OF[(cfg.name, gpu)]
    except KeyError:
        raise ValueError(f"model {cfg.name}: no profile on {gpu}; add it to PROFILE_OF") from None
    prof = PROFILE_SHAPES[prof_name]
    c = CAUSAL_PAIR_FACTOR * cfg.attn_flops_per_pair / (tp * ATTN_FLOPS[gpu])
    if not cfg.moe:
        f = fit_for(cfg, prof, fits[(gpu, prof_name, tp)])
        return LayerCompute(
            f.attn.a_ms + f.mlp.a_ms, f.attn.b_ms_per_token + f.mlp.b_ms_per_token, c, f.attn_floor_ms + f.mlp_floor_ms
        )
    f = fit_for(cfg, prof, fits[(gpu, prof_name, 1)])
    experts_per_rank = math.ceil(cfg.num_local_experts / tp)
    a = f.attn.a_ms + experts_per_rank * f.mlp.a_ms
    b = (f.attn.b_ms_per_token + cfg.num_experts_per_tok * f.mlp.b_ms_per_token) / tp
    # decode of one token: one rank's attention; its top-k experts run on k ranks in parallel
    return LayerCompute(a, b, c, f.attn_floor_ms + f.mlp_floor_ms)


def model_from_config(
    cfg: HFConfig, gpu: str = "h100", tp: int = DEFAULT_TP, layer_groups: int = DEFAULT_LAYER_GROUPS, name: str | None = None
) -> ModelShape:
    """The `ModelShape` of `cfg` on prefill groups of `tp` GPUs of type `gpu` (module doc)."""
    L = cfg.num_hidden_layers
    if layer_groups < 1 or L % layer_groups:
        raise ValueError(f"model {cfg.name}: layer_groups must divide its {L} layers, got {layer_groups}")
    per = L // layer_groups
    lc = layer_compute(cfg, gpu, tp)
    return ModelShape(
        name=name or f"{cfg.name}:{gpu}:tp{tp}",
        layer_groups=layer_groups,
        kv_bytes_per_token_per_group=per * cfg.kv_bytes_per_token_per_layer,
        act_bytes_per_token_per_group=per * cfg.act_bytes_per_token_per_layer,
        collective="all_to_all" if cfg.moe else "all_reduce",
        compute_a_s=per * lc.a_ms / 1e3,
        compute_b_s_per_token=per * lc.b_ms_per_token / 1e3,
        compute_c_s_per_token2=per * lc.c_s_per_pair,
        decode_step_s=L * lc.decode_ms / 1e3,
        gpu=gpu,
        tp=tp,
    )


def parse_model_name(name: str) -> tuple[str, str, int | None] | None:
    """`<model>[:<gpu>][:tp<G>]` -> (model, gpu, tp or None); None if `<model>` is not one of
    `HF_CONFIGS`. Raises ValueError naming the fix for a malformed suffix."""
    parts = name.strip().lower().split(":")
    if parts[0] not in HF_CONFIGS:
        return None
    gpu, tp = "h100", None
    for p in parts[1:]:
        if p in GPUS:
            gpu = p
        elif p.startswith("tp") and p[2:].isdigit():
            tp = int(p[2:])
        else:
            raise ValueError(f"model {name!r}: bad suffix {p!r}: use {parts[0]}[:h100|:a100][:tp1|2|4|8]")
    return parts[0], gpu, tp


def hardware_model(name: str, tp: int | None = None) -> ModelShape | None:
    """The hardware preset `name` (`<model>[:<gpu>][:tp<G>]`); without an explicit `:tp<G>` the
    TP degree is `tp` (the cluster's group size) or DEFAULT_TP. None if not a hardware model."""
    parsed = parse_model_name(name)
    if parsed is None:
        return None
    base, gpu, explicit = parsed
    if explicit is not None and tp is not None and explicit != tp:
        raise ValueError(
            f"model {name} is for TP {explicit} but the cluster's prefill groups have "
            f"{tp} GPUs: drop ':tp{explicit}' or pick a cluster with groups of {explicit}"
        )
    g = explicit or tp or DEFAULT_TP
    return model_from_config(HF_CONFIGS[base], gpu, g, name=f"{base}:{gpu}:tp{g}")


__all__ = [
    "ATTN_FLOPS",
    "CAUSAL_PAIR_FACTOR",
    "HFConfig",
    "HF_CONFIGS",
    "LayerCompute",
    "PROFILE_FITS",
    "PROFILE_OF",
    "PROFILE_SHAPES",
    "fit_for",
    "hardware_model",
    "layer_compute",
    "model_from_config",
    "parse_model_name",
]
