"""Scheduling policies: MFS, its effective-laxity variant and the baselines (pure Python).

    from mfs_tc.policy import make_policy, POLICY_NAMES
    policy = make_policy("mfs", nlevels=8, ref_rate_bps=200e6)
    entry = policy.entry(request, stage, flow, now_ns)     # a mfs_tc.entry.FlowEntry
    entry.level(now_ns, sent=..., cursor=...)               # what the kernel will pick

Modules: base (the interface), mfs, laxity (mfs-laxity), baselines, red (Robust Effective
Deadline), work (work-ahead estimators), levels (threshold tables, level layout), calibrate,
registry (make_policy). docs/policy.md describes every policy, key and default.
"""

from .base import Policy, PolicyConfig
from .baselines import (
    EdfConfig,
    EdfPolicy,
    FairConfig,
    FairPolicy,
    FifoConfig,
    FifoPolicy,
    KarunaConfig,
    KarunaPolicy,
    LlfOracleConfig,
    LlfOraclePolicy,
    PiasPolicy,
    SizeConfig,
    SjfPolicy,
    SrptPolicy,
    StageConfig,
    StagePolicy,
)
from .calibrate import CalibrationWorkload, calibrate
from .laxity import MfsLaxityConfig, MfsLaxityPolicy
from .mfs import MfsConfig, MfsPolicy
from .red import red, red_split
from .registry import POLICIES, POLICY_NAMES, config_keys, make_policy, policy_class
from .work import ESTIMATORS

__all__ = [
    "ESTIMATORS",
    "POLICIES",
    "POLICY_NAMES",
    "CalibrationWorkload",
    "EdfConfig",
    "EdfPolicy",
    "FairConfig",
    "FairPolicy",
    "FifoConfig",
    "FifoPolicy",
    "KarunaConfig",
    "KarunaPolicy",
    "LlfOracleConfig",
    "LlfOraclePolicy",
    "MfsConfig",
    "MfsLaxityConfig",
    "MfsLaxityPolicy",
    "MfsPolicy",
    "PiasPolicy",
    "Policy",
    "PolicyConfig",
    "SizeConfig",
    "SjfPolicy",
    "SrptPolicy",
    "StageConfig",
    "StagePolicy",
    "calibrate",
    "config_keys",
    "make_policy",
    "policy_class",
    "red",
    "red_split",
]
