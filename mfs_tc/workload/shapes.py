"""Model and cluster shapes: what a workload runs on.

Compute model (documented, the same for testbed and simulator). For a batch whose members compute
`n_i` new tokens (input minus reused prefix) over contexts of `t_i` input tokens, one layer group
of the prefill group takes

    compute_s = a + b * N + c * sum(n_i * t_i)        with N = sum(n_i)

seconds (the group's G ranks compute in parallel; the figure is the group's wall time). `a` is the
fixed launch/weight-read cost, `b` the linear (GEMM) cost per token, `c` the attention cost per
token pair. The first token then takes one decode step of `decode_step_s` on the decode host.

Bytes (before `byte_scale`):
- kv_fetch, per layer group: reused_tokens x kv_bytes_per_token_per_group, sharded evenly over the
  G ranks (each rank fetches its shard from the request's KV host).
- collective, per layer group: each rank holds S = N x act_bytes_per_token_per_group / G bytes of
  activations. Dense (all-reduce, ring): rank i sends 2 (G-1)/G x S to rank i+1 (mod G), the
  ring all-reduce volume per rank. MoE (all-to-all, dispatch + combine): rank i sends 2 S / G
  to every other rank. G = 1: no collective.
- p2d, per request: input_tokens x kv_bytes_per_token_per_group x layer_groups, sharded evenly
  from the G ranks to the request's decode host.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

COLLECTIVES = ("all_reduce", "all_to_all")


@dataclass(frozen=True, slots=True)
class ModelShape:
    name: str
    layer_groups: int
    kv_bytes_per_token_per_group: float
    act_bytes_per_token_per_group: float
    collective: str  # "all_reduce" (dense) or "all_to_all" (moe)
    compute_a_s: float
    compute_b_s_per_token: float
    compute_c_s_per_token2: float = 0.0
    decode_step_s: float = 0.005
    block_tokens: int = 512
    gpu: str = ""  # hardware presets: the GPU the compute was measured on
    tp: int = 0  # hardware presets: the prefill group size G the compute is for (0: any)

    def __post_init__(self) -> None:
        if self.layer_groups < 1:
            raise ValueError(f"model {self.name}: layer_groups must be >= 1, got {self.layer_groups}")
        if self.collective not in COLLECTIVES:
            raise ValueError(
                f"model {self.name}: collective must be one of {', '.join(COLLECTIVES)}, " f"got {self.collective!r}"
            )
        for f in (
            "kv_bytes_per_token_per_group",
            "act_bytes_per_token_per_group",
            "compute_a_s",
            "compute_b_s_per_token",
            "compute_c_s_per_token2",
            "decode_step_s",
        ):
            if getattr(self, f) < 0:
                raise ValueError(f"model {self.name}: {f} must not be negative")
        if self.block_tokens < 1:
            raise ValueError("block_tokens must be >= 1")

    @property
    def moe(self) -> bool:
        return self.collective == "all_to_all"

    def compute_s(self, new_tokens: list[int], context_tokens: list[int]) -> float:
        """Wall time of one layer group for a batch (see the module doc)."""
        n = sum(new_tokens)
        quad = sum(a * b for a, b in zip(new_tokens, context_tokens, strict=False))
        return self.compute_a_s + self.compute_b_s_per_token * n + self.compute_c_s_per_token2 * quad

    def scaled(self, byte_scale: float) -> ModelShape:
        """The same model with every byte count multiplied by `byte_scale` (compute unchanged)."""
        if byte_scale <= 0:
            raise ValueError(f"byte_scale must be positive, got {byte_scale}")
        return replace(
            self,
            kv_bytes_per_token_per_group=self.kv_bytes_per_token_per_group * byte_scale,
            act_bytes_per_token_per_group=self.act_bytes_per_token_per_group * byte_scale,
        )


# Presets. Bytes are real (fp16/bf16 KV and activations); compute figures are for one prefill
# group of G GPUs of the H100 class, rounded.
MODEL_PRESETS: dict[str, ModelShape] = {
    # ~1B dense, 16 layers in 4 groups, 8 KV heads x 64 dims: 2 KiB/token/layer of KV;
    # hidden 2048: one all-reduce of 4 KiB/token per layer. The testbed default.
    "dense-small": ModelShape(
        name="dense-small",
        layer_groups=4,
        kv_bytes_per_token_per_group=4 * 2048,
        act_bytes_per_token_per_group=4 * 4096,
        collective="all_reduce",
        compute_a_s=0.0005,
        compute_b_s_per_token=2e-6,
        compute_c_s_per_token2=0.0,
        decode_step_s=0.005,
    ),
    # Llama-70B-like: 80 layers in 8 groups of 10, GQA 8 KV heads x 128 dims x 2 (K,V) x 2 B
    # = 4 KiB/token/layer; hidden 8192 bf16: 16 KiB/token per all-reduce, 2 per layer.
    "dense-70b": ModelShape(
        name="dense-70b",
        layer_groups=8,
        kv_bytes_per_token_per_group=10 * 4096,
        act_bytes_per_token_per_group=10 * 2 * 16384,
        collective="all_reduce",
        compute_a_s=0.002,
        compute_b_s_per_token=2.2e-5,
        compute_c_s_per_token2=1.0e-10,
        decode_step_s=0.03,
    ),
    # Mixtral-8x7B-like MoE: 32 layers in 8 groups of 4, 8 KV heads x 128 x 2 x 2 B = 4 KiB/token/
    # layer; hidden 4096 bf16 = 8 KiB/token, top-2 routing: 2 x 8 KiB per token per layer (each of
    # dispatch and combine is counted by the all-to-all rule).
    "moe-8x": ModelShape(
        name="moe-8x",
        layer_groups=8,
        kv_bytes_per_token_per_group=4 * 4096,
        act_bytes_per_token_per_group=4 * 2 * 8192,
        collective="all_to_all",
        compute_a_s=0.001,
        compute_b_s_per_token=4e-6,
        compute_c_s_per_token2=3.0e-11,
        decode_step_s=0.015,
    ),
}


def model_names() -> list[str]:
    """Every model preset name: the synthetic shapes above and the hardware presets
    (`hardware.py`, each also as `<name>:a100`, `<name>:h100:tp4`...)."""
    from .hardware import HF_CONFIGS  # hardware builds ModelShapes: imported at top, a cycle

    return [*MODEL_PRESETS, *HF_CONFIGS]


def model_preset(name: str, tp: int | None = None) -> ModelShape:
    """The preset `name`. Hardware presets (`qwen-72b`, `llama3-70b`, `llama3-8b`,
    `mixtral-8x7b`, optionally `:a100` / `:h100` and `:tp<G>`) are built for TP degree `tp`
    (pass the cluster's group size) unless the name fixes it; the synthetic ones ignore `tp`."""
    if name in MODEL_PRESETS:
        return MODEL_PRESETS[name]
    from .hardware import hardware_model  # (the same cycle)

    shape = hardware_model(name, tp)
    if shape is None:
        raise ValueError(
            f"unknown model shape {name!r}: choose one of {', '.join(model_names())} "
            "(hardware ones also as NAME:a100 or NAME:h100:tp4)"
        )
    return shape


@dataclass(frozen=True, slots=True)
class ClusterShape:
    """Hosts of a disaggregated serving cluster. Host names: `kv<i>` (KV store), `p<g>r<r>`
    (rank r of prefill group g), `d<i>` (decode). Each host has one link of `link_rate_bps` to the
    fabric.

    Routing (decided once at generation, by arrival order, so testbed and simulator agree):
    prefill group = round robin over arrivals; decode host = round robin over arrivals;
    KV host = a fixed hash of the request's last reused block (the block that ends its cached
    prefix) mod kv_hosts (the first request to see a prefix caches it there).
    """

    kv_hosts: int = 1
    prefill_groups: int = 2
    group_size: int = 2
    decode_hosts: int = 1
    link_rate_bps: float = 200e6
    hosts_per_rack: int = 0  # 0: one big switch (host uplink + switch downlink only)
    oversubscription: float = 1.0  # leaf uplink = hosts_per_rack x link / oversubscription

    def __post_init__(self) -> None:
        for f in ("kv_hosts", "prefill_groups", "group_size", "decode_hosts"):
            if getattr(self, f) < 1:
                raise ValueError(f"cluster {f} must be >= 1, got {getattr(self, f)}")
        if self.link_rate_bps <= 0:
            raise ValueError(f"link rate must be positive, got {self.link_rate_bps}")
        if self.hosts_per_rack < 0 or self.oversubscription < 1.0:
            raise ValueError("hosts_per_rack must be >= 0 and oversubscription >= 1.0")

    @property
    def num_hosts(self) -> int:
        return self.kv_hosts + self.prefill_groups * self.group_size + self.decode_hosts

    def kv_host(self, i: int) -> str:
        return f"kv{i}"

    def prefill_rank(self, group: int, rank: int) -> str:
        return f"p{group}r{rank}"

    def ranks(self, group: int) -> list[str]:
        return [self.prefill_rank(group, r) for r in range(self.group_size)]

    def decode_host(self, i: int) -> str:
        return f"d{i}"

    def hosts(self) -> list[str]:
        out = [self.kv_host(i) for i in range(self.kv_hosts)]
        for g in range(self.prefill_groups):
            out += self.ranks(g)
        out += [self.decode_host(i) for i in range(self.decode_hosts)]
        return out

    @property
    def gpus(self) -> int:
        return self.prefill_groups * self.group_size


CLUSTER_PRESETS: dict[str, ClusterShape] = {
    # the netns testbed: 1 KV host, 2 prefill groups of 2, 1 decode host, 200 Mbit/s links
    "testbed": ClusterShape(),
    # 32 servers x 8 NICs = 256 hosts: 24 prefill servers (groups of 8 GPUs), 4 KV, 4 decode servers
    "c256": ClusterShape(
        kv_hosts=32,
        prefill_groups=24,
        group_size=8,
        decode_hosts=32,
        link_rate_bps=200e9,
        hosts_per_rack=32,
        oversubscription=2.0,
    ),
    # 1,024 GPUs: 128 groups of 8, 64 KV and 64 decode NICs, 400 Gbit/s
    "c1024": ClusterShape(
        kv_hosts=64,
        prefill_groups=128,
        group_size=8,
        decode_hosts=64,
        link_rate_bps=400e9,
        hosts_per_rack=64,
        oversubscription=2.0,
    ),
    # As deployed (docs/hardware.md has the sources and the split). The paper's testbed: 8
    # servers x 4 GPUs, one 100 Gbit/s NIC per GPU, one switch: 1 KV server (4 NICs), 5 prefill
    # servers (5 groups of TP 4), 2 decode servers (8 decode GPUs).
    "paper": ClusterShape(kv_hosts=4, prefill_groups=5, group_size=4, decode_hosts=8, link_rate_bps=100e9),
    # 32 DGX-A100-class servers, 8 GPUs each with its own 200 Gbit/s NIC (256 hosts): 4 KV
    # servers, 20 prefill servers (TP 8), 8 decode servers; leaves of 32 NICs (4 servers) with
    # 16 uplinks: 2:1.
    "ls256-200g": ClusterShape(
        kv_hosts=32,
        prefill_groups=20,
        group_size=8,
        decode_hosts=64,
        link_rate_bps=200e9,
        hosts_per_rack=32,
        oversubscription=2.0,
    ),
    # 72 DGX-H100-class servers, 8 x 400 Gbit/s NICs each (576 hosts): 8 KV, 48 prefill (TP 8),
    # 16 decode servers; 64-port 400G leaves, 48 NICs (6 servers) down, 16 up: 3:1.
    "ls576-400g": ClusterShape(
        kv_hosts=64,
        prefill_groups=48,
        group_size=8,
        decode_hosts=128,
        link_rate_bps=400e9,
        hosts_per_rack=48,
        oversubscription=3.0,
    ),
}


def cluster_preset(name: str) -> ClusterShape:
    try:
        return CLUSTER_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown cluster shape {name!r}: choose one of {', '.join(CLUSTER_PRESETS)}") from None
