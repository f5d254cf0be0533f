"""Policy names -> classes, and `make_policy(name, **config)`."""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import Policy
from .baselines import (
    EdfPolicy,
    FairPolicy,
    FifoPolicy,
    KarunaPolicy,
    LlfOraclePolicy,
    PiasPolicy,
    SjfPolicy,
    SrptPolicy,
    StagePolicy,
)
from .laxity import MfsLaxityPolicy
from .mfs import MfsPolicy

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (
        MfsPolicy,
        MfsLaxityPolicy,
        FairPolicy,
        SjfPolicy,
        EdfPolicy,
        KarunaPolicy,
        FifoPolicy,
        SrptPolicy,
        PiasPolicy,
        StagePolicy,
        LlfOraclePolicy,
    )
}
POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)


def policy_class(name: str) -> type[Policy]:
    try:
        return POLICIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown policy {name!r}: valid names are {', '.join(POLICY_NAMES)}") from None


def config_keys(name: str) -> tuple[str, ...]:
    """The configuration keys policy `name` accepts."""
    return tuple(f.name for f in dataclasses.fields(policy_class(name).config_class))


def make_policy(name: str, **config: Any) -> Policy:
    """The policy called `name`, configured by keyword (see docs/policy.md for every key).

    Unknown names and unknown or bad keys raise ValueError saying what is valid."""
    cls = policy_class(name)
    keys = config_keys(name)
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise ValueError(f"policy {name!r} has no config key {', '.join(unknown)}: valid keys are {', '.join(keys)}")
    try:
        cfg = cls.config_class(**config)
    except TypeError as exc:  # e.g. a value of a type the comparisons reject
        raise ValueError(f"policy {name!r}: bad configuration: {exc}") from None
    return cls(cfg)
