"""What to generate: `WorkloadConfig`. Defaults are the netns testbed's default workload."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .shapes import CLUSTER_PRESETS, ClusterShape, ModelShape, cluster_preset, model_preset

# Trace kinds read `trace_path` (any format of `traces.py`, detected from the content); the kind
# picks the default file. `trace` is a trace given by path only (`--trace FILE`).
TRACE_KINDS = ("mooncake", "azure", "trace")
KINDS = (*TRACE_KINDS, "poisson")
INPUT_DISTS = ("fixed", "exponential", "lognormal")
TRACE_NAME = "mooncake_conversation_trace.jsonl"
TRACE_NAMES = {"mooncake": TRACE_NAME, "azure": "splitwise_conv.csv", "trace": TRACE_NAME}
_REPO = Path(__file__).resolve().parents[2]


def default_trace_path(kind: str = "mooncake") -> Path:
    """The kind's real trace, read in place: /work/shared/traces/..., or ../shared/traces/...
    beside the repository (`mooncake`: the Mooncake conversation trace; `azure`: the Azure
    conversation trace as published with Splitwise)."""
    name = TRACE_NAMES.get(kind, TRACE_NAME)
    for cand in (
        Path("/work/shared/traces") / name,
        _REPO.parent / "shared" / "traces" / name,
        _REPO / ".." / "shared" / "traces" / name,
    ):
        if cand.is_file():
            return cand
    return Path("/work/shared/traces") / name


@dataclass(slots=True)
class WorkloadConfig:
    """How to build a workload.

    Arrivals: a trace kind (`mooncake`, `azure`, `trace`: `trace_path`, default the kind's
    shared trace, in any format `traces.py` reads) replays the trace's timestamps multiplied by `time_scale` (0.5 = twice
    the native rate); `poisson` draws exponential gaps. If `load` (requests/s) is set it wins:
    for a trace `time_scale` becomes native_rate / load over the selected requests; for poisson
    it is the rate. `slo_s = slo_scale x unloaded TTFT`. Every byte count is multiplied by
    `byte_scale` (so an emulated 200 Mbit/s link is the bottleneck as 100G+ links are on a real
    cluster). `max_input_tokens` caps the trace's longest prompts (0: no cap).
    """

    kind: str = "mooncake"
    num_requests: int = 200
    load: float | None = None
    time_scale: float = 1.0
    seed: int = 1
    slo_scale: float = 5.0
    model: str | ModelShape = "dense-small"
    cluster: str | ClusterShape = "testbed"
    byte_scale: float = 1.0 / 32  # the emulated 200 Mbit/s links are the bottleneck (high load)
    max_batch: int = 4
    max_batch_tokens: int = 0  # 0: no token bound on a batch
    max_input_tokens: int = 32768
    trace_path: Path | None = None  # None: default_trace_path(kind)
    trace_offset: int = 0  # skip this many trace lines first (their blocks still count as seen)
    # the trace's timestamps come in bursts (300 lines share ~35 distinct times); True spreads
    # the requests of a burst uniformly at random (seeded) over the gap to the next timestamp
    spread_bursts: bool = True
    # traces without prefix hashes (CSV): fraction of requests that continue an earlier
    # conversation and reuse its history as a prefix (traces.ConversationReuse)
    conversation_continue: float = 0.5
    # poisson only
    prefix_reuse: float = 0.3  # fraction of each prompt (whole blocks) that is a reused prefix
    input_dist: str = "lognormal"
    input_mean_tokens: int = 8192
    input_sigma: float = 0.8  # lognormal shape

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"workload kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")
        if self.load is not None and self.load <= 0:
            raise ValueError(f"load (requests/s) must be positive, got {self.load}")
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {self.time_scale}")
        if self.slo_scale <= 0:
            raise ValueError(f"slo_scale must be positive, got {self.slo_scale}")
        if self.byte_scale <= 0:
            raise ValueError(f"byte_scale must be positive, got {self.byte_scale}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_batch_tokens < 0 or self.max_input_tokens < 0 or self.trace_offset < 0:
            raise ValueError("max_batch_tokens, max_input_tokens and trace_offset must be >= 0")
        if not 0.0 <= self.prefix_reuse < 1.0:
            raise ValueError(f"prefix_reuse must be in [0, 1), got {self.prefix_reuse}")
        if self.input_dist not in INPUT_DISTS:
            raise ValueError(f"input_dist must be one of {', '.join(INPUT_DISTS)}, got {self.input_dist!r}")
        if self.input_mean_tokens < 1 or self.input_sigma < 0:
            raise ValueError("input_mean_tokens must be >= 1 and input_sigma >= 0")
        if self.kind == "poisson" and self.load is None:
            raise ValueError("a poisson workload needs load (requests/s): set load")
        if not 0.0 <= self.conversation_continue <= 1.0:
            raise ValueError(f"conversation_continue must be in [0, 1], got {self.conversation_continue}")
        if self.kind == "trace" and self.trace_path is None:
            raise ValueError("workload kind 'trace' reads the file given by --trace FILE (trace_path=)")
        self.trace_path = Path(self.trace_path) if self.trace_path is not None else default_trace_path(self.kind)
        if isinstance(self.cluster, str):
            cluster_preset(self.cluster)
        self.base_model()

    def base_model(self) -> ModelShape:
        """The model before `byte_scale`: a hardware preset is built for the cluster's prefill
        group size; a shape fitted for another TP degree is an error naming the fix."""
        g = self.cluster_shape().group_size
        m = model_preset(self.model, tp=g) if isinstance(self.model, str) else self.model
        if m.tp and m.tp != g:
            raise ValueError(
                f"model {m.name} is for TP {m.tp} but the cluster's prefill groups "
                f"have {g} GPUs: use a cluster with groups of {m.tp} or build the "
                f"model for TP {g}"
            )
        return m

    def model_shape(self) -> ModelShape:
        """The model with `byte_scale` applied."""
        return self.base_model().scaled(self.byte_scale)

    def cluster_shape(self) -> ClusterShape:
        return cluster_preset(self.cluster) if isinstance(self.cluster, str) else self.cluster


__all__ = ["WorkloadConfig", "KINDS", "TRACE_KINDS", "INPUT_DISTS", "default_trace_path", "CLUSTER_PRESETS"]
