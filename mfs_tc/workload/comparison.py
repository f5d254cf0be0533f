"""What a comparison run sweeps, shared by the netns testbed and the simulator: policies over the
same arrivals, for every (seed, load, slo_scale) point. One copy of the validation and of how a
point becomes a `WorkloadConfig` (including the seed -> trace window rule of every trace kind)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..policy.registry import POLICY_NAMES, make_policy
from .config import TRACE_KINDS, WorkloadConfig
from .generate import trace_window
from .shapes import ClusterShape

DEFAULT_POLICIES = ("mfs", "fair", "edf", "karuna", "sjf", "pias")


@dataclass(slots=True)
class ComparisonConfig:
    policies: list[str] = field(default_factory=lambda: list(DEFAULT_POLICIES))
    seeds: list[int] = field(default_factory=lambda: [1])
    loads: list[float | None] = field(default_factory=lambda: [None])
    slo_scales: list[float] = field(default_factory=lambda: [5.0])
    workload: str = "mooncake"
    num_requests: int = 40
    model: str = "dense-small"
    byte_scale: float | None = None  # None: the workload's default
    max_batch: int | None = None
    time_scale: float | None = None
    trace_path: Path | None = None
    spread_bursts: bool = True
    levels: int = 8
    policy_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.policies:
            raise ValueError("no policy given: e.g. --policy mfs,fair")
        if len(set(self.policies)) != len(self.policies):
            raise ValueError(f"a policy is listed twice: {','.join(self.policies)}")
        if self.checks_policies():
            bad = [p for p in self.policies if p not in POLICY_NAMES]
            if bad:
                raise ValueError(f"unknown policy {', '.join(bad)}: choose from {', '.join(POLICY_NAMES)}")
            if self.policy_config:
                for p in self.policies:  # a key or value a policy does not take: fail before any run
                    make_policy(p, **self.policy_config)
        if not self.seeds or not self.loads or not self.slo_scales:
            raise ValueError("seeds, loads and slo scales must not be empty")
        if self.num_requests < 1:
            raise ValueError("--requests must be at least 1")

    def checks_policies(self) -> bool:
        """Whether the policy names must be scheduling policies (the testbed's plain datapath
        runs without one)."""
        return True

    def point_config(
        self, seed: int, load: float | None, slo_scale: float, cluster: ClusterShape, **overrides: object
    ) -> WorkloadConfig:
        """The workload of one (seed, load, slo_scale) point on `cluster`."""
        kw: dict[str, Any] = dict(
            kind=self.workload,
            num_requests=self.num_requests,
            seed=seed,
            load=load,
            slo_scale=slo_scale,
            model=self.model,
            cluster=cluster,
            spread_bursts=self.spread_bursts,
        )
        for k in ("byte_scale", "max_batch", "time_scale", "trace_path"):
            v = getattr(self, k)
            if v is not None:
                kw[k] = v
        kw.update(overrides)
        cfg = WorkloadConfig(**kw)
        if self.workload in TRACE_KINDS:
            assert cfg.trace_path is not None  # WorkloadConfig.__post_init__ always sets it
            cfg.trace_offset = trace_window(cfg.trace_path, seed, self.num_requests)
        return cfg
