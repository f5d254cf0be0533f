"""What to generate: `WorkloadConfig`. Defaults are the netns testbed's default workload."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .shapes import CLUSTER_PRESETS, ClusterShape, ModelShape, cluster_preset, model_preset

KINDS = ("mooncake", "poisson")
INPUT_DISTS = ("fixed", "exponential", "lognormal")
TRACE_NAME = "mooncake_conversation_trace.jsonl"
_REPO = Path(__file__).resolve().parents[2]


def default_trace_path() -> Path:
    """The real Mooncake trace, read in place: /work/shared/traces/..., or ../shared/traces/...
    beside the repository."""
    for cand in (
        Path("/work/shared/traces") / TRACE_NAME,
        _REPO.parent / "shared" / "traces" / TRACE_NAME,
        _REPO / ".." / "shared" / "traces" / TRACE_NAME,
    ):
        if cand.is_file():
            return cand
    return Path("/work/shared/traces") / TRACE_NAME


@dataclass(slots=True)
class WorkloadConfig:
    """How to build a workload.

    Arrivals: `mooncake` replays the trace's timestamps multiplied by `time_scale` (0.5 = twice
    the native rate); `poisson` draws exponential gaps. If `load` (requests/s) is set it wins:
    for mooncake `time_scale` becomes native_rate / load over the selected requests; for poisson
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
    trace_path: Path = field(default_factory=default_trace_path)
    trace_offset: int = 0  # skip this many trace lines first (their blocks still count as seen)
    # the trace's timestamps come in bursts (300 lines share ~35 distinct times); True spreads
    # the requests of a burst uniformly at random (seeded) over the gap to the next timestamp
    spread_bursts: bool = True
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
            raise ValueError(
                f"input_dist must be one of {', '.join(INPUT_DISTS)}, got {self.input_dist!r}"
            )
        if self.input_mean_tokens < 1 or self.input_sigma < 0:
            raise ValueError("input_mean_tokens must be >= 1 and input_sigma >= 0")
        if self.kind == "poisson" and self.load is None:
            raise ValueError("a poisson workload needs load (requests/s): set load")
        self.trace_path = Path(self.trace_path)
        if isinstance(self.cluster, str):
            cluster_preset(self.cluster)
        self.base_model()

    def base_model(self) -> ModelShape:
        """The model before `byte_scale`: a hardware preset is built for the cluster's prefill
        group size; a shape fitted for another TP degree is an error naming the fix."""
        g = self.cluster_shape().group_size
        m = model_preset(self.model, tp=g) if isinstance(self.model, str) else self.model
        if m.tp and m.tp != g:
            raise ValueError(f"model {m.name} is for TP {m.tp} but the cluster's prefill groups "
                             f"have {g} GPUs: use a cluster with groups of {m.tp} or build the "
                             f"model for TP {g}")
        return m

    def model_shape(self) -> ModelShape:
        """The model with `byte_scale` applied."""
        return self.base_model().scaled(self.byte_scale)

    def cluster_shape(self) -> ClusterShape:
        return cluster_preset(self.cluster) if isinstance(self.cluster, str) else self.cluster


__all__ = ["WorkloadConfig", "KINDS", "INPUT_DISTS", "default_trace_path", "CLUSTER_PRESETS"]
