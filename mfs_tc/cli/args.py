"""Parsers of list-valued options shared by `testbed run` and `sim run` (same flags, same syntax)."""

from __future__ import annotations

import json
from typing import Any

from ..errors import MfsError


def floats(text: str | None, what: str) -> list[float]:
    """'3' or '2,4,8' -> positive numbers."""
    if text is None:
        return []
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MfsError(f"--{what}: expected numbers separated by commas (e.g. 2,4,8), got {text!r}") from None
    if any(x <= 0 for x in out):
        raise MfsError(f"--{what}: values must be positive")
    return out


def ints(text: str, what: str) -> list[int]:
    """'1,2,3' or '1-3' -> integers."""
    try:
        if "-" in text and "," not in text:
            a, b = (int(x) for x in text.split("-"))
            return list(range(a, b + 1))
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MfsError(f"--{what}: expected integers like 1,2,3 or 1-3, got {text!r}") from None


def policy_config_items(items: list[str]) -> dict[str, Any]:
    """--policy-config KEY=VALUE items -> the policy config (VALUE as JSON, else the string)."""
    cfg: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise MfsError(f"bad --policy-config {it!r}: use KEY=VALUE (VALUE as JSON, e.g. " "mlu_thresholds=[0.1,0.5])")
        k, v = it.split("=", 1)
        try:
            cfg[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            cfg[k.strip()] = v
    return cfg
