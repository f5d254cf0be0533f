"""The shared workload: model/cluster shapes (synthetic, or from real configs and GPU profiles:
hardware.py), request generation (Mooncake / Azure traces, traces.py, or Poisson),
batching and per-batch plans, and adapters to policy inputs. Pure Python, no root. The netns
testbed (real time) and the flow-level simulator (virtual time) both consume these objects."""

from .adapt import batch_of, request_estimate, to_model_request
from .batching import BatchPlan, LayerPlan, Transfer, form_batch, plan_batch
from .config import INPUT_DISTS, KINDS, TRACE_KINDS, WorkloadConfig, default_trace_path
from .estimate import WorkAhead, work_ahead
from .generate import Workload, block_hash, generate, trace_window, unloaded_ttft_s
from .shapes import (
    CLUSTER_PRESETS,
    MODEL_PRESETS,
    ClusterShape,
    ModelShape,
    cluster_preset,
    model_names,
    model_preset,
)
from .spec import RequestSpec

__all__ = [
    "BatchPlan",
    "CLUSTER_PRESETS",
    "ClusterShape",
    "INPUT_DISTS",
    "KINDS",
    "LayerPlan",
    "MODEL_PRESETS",
    "ModelShape",
    "RequestSpec",
    "TRACE_KINDS",
    "Transfer",
    "Workload",
    "WorkloadConfig",
    "batch_of",
    "block_hash",
    "cluster_preset",
    "default_trace_path",
    "form_batch",
    "generate",
    "trace_window",
    "model_names",
    "model_preset",
    "plan_batch",
    "request_estimate",
    "to_model_request",
    "unloaded_ttft_s",
    "WorkAhead",
    "work_ahead",
]
