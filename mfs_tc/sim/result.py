"""What one simulation returns (`engine.simulate`), whichever engine ran it (`accel`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..results import JsonDict, RequestRow


@dataclass(slots=True)
class SimResult:
    policy: str
    requests: list[RequestRow]
    ccts_s: list[float]
    level_bytes: list[float]
    stage_bytes: dict[str, float]
    sim_time_s: float
    wall_s: float
    events: int
    recomputes: int
    flows: int
    tick_s: float
    stats: JsonDict = field(default_factory=dict)
    net_util: dict[str, JsonDict] = field(default_factory=dict)  # per link class, see sim.netutil
    # which engine ran it: "python" (the modules as written) or "compiled" (sim.accel)
    engine: str = "python"

    @property
    def attainment(self) -> float:
        n = len(self.requests)
        return sum(1 for r in self.requests if r.met) / n if n else 0.0
