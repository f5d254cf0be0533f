"""One request of a workload, as both the testbed and the simulator replay it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestSpec:
    request_id: int
    arrival_s: float  # seconds from the workload's start
    input_tokens: int
    reused_tokens: int  # prefix tokens whose KV is fetched from the KV store
    output_tokens: int
    prefill_group: int
    decode_host: str
    kv_host: str
    slo_s: float  # slo_scale x unloaded_ttft_s
    unloaded_ttft_s: float  # alone on an idle cluster (BatchPlan.ideal_ttft_s of a batch of one)

    @property
    def new_tokens(self) -> int:
        return self.input_tokens - self.reused_tokens

    @property
    def deadline_s(self) -> float:
        return self.arrival_s + self.slo_s
