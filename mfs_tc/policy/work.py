"""Work still ahead of a request: the W_r(t) of DESIGN section 1, estimated.

Bytes convert to time at the policy's reference rate with the kernel's own integer rule
(bytes * ps_per_byte // 1000), so a laxity computed here and one the classifier computes agree.

Estimators (config key `estimator`):
  request  the serving process's estimates: request.remaining_bytes at the reference rate plus
           request.remaining_compute_ns (default).
  max      the larger of the request's estimates and what the flow itself shows (its unsent
           bytes; its stage's compute_after_ns), term by term: robust when the serving process
           leaves the request estimates at zero.
"""

from __future__ import annotations

from ..model import Flow, Request, Stage

ESTIMATORS = ("request", "max")


def check_estimator(name: str) -> str:
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}: expected one of {', '.join(ESTIMATORS)}")
    return name


def bytes_ns(nbytes: int, ps: int) -> int:
    """Time to move `nbytes` at `ps` picoseconds per byte, in ns, as the kernel rounds it."""
    return nbytes * ps // 1000 if nbytes > 0 else 0  # (no max(): asked for every registration)


def request_work_ns(request: Request, ps: int) -> int:
    return bytes_ns(request.remaining_bytes, ps) + request.remaining_compute_ns


def work_ahead_ns(estimator: str, request: Request, stage: Stage, flow: Flow, ps: int) -> int:
    """Estimated work ahead of `request`, seen from `flow` of `stage`, in ns."""
    if estimator == "request":
        return request_work_ns(request, ps)
    if estimator == "max":
        nbytes = max(request.remaining_bytes, flow.bytes - flow.sent)
        compute = max(request.remaining_compute_ns, stage.compute_after_ns)
        return bytes_ns(nbytes, ps) + compute
    raise ValueError(f"unknown estimator {estimator!r}: expected one of {', '.join(ESTIMATORS)}")


def hopeless(request: Request, now_ns: int, ps: int, margin_ns: int) -> bool:
    """A request can no longer meet its SLO: the time left, plus `margin_ns` of benefit of the
    doubt, is shorter than the work still ahead (or the serving process already scavenged it)."""
    if request.scavenged:
        return True
    return request.deadline_ns - now_ns + margin_ns < request_work_ns(request, ps)
