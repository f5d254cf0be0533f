"""Test-only plumbing for the controller tests: a tiny policy and maps pinned in a scratch dir."""

from __future__ import annotations

import uuid
from pathlib import Path

from mfs_tc.entry import FlowEntry, mlu_fixed, ps_per_byte
from mfs_tc.layout import F_AUTO_SCAVENGE, MODE_MLU, MODE_RLI, PIN_ROOT, FlowState
from mfs_tc.maps import PinnedMaps
from mfs_tc.model import Flow, Request, Stage
from mfs_tc.policy.base import Policy, PolicyConfig

# under the pin root (not at the top of bpffs, which other tests snapshot), two levels deeper than
# real pins so `mfs-tc flows` never lists them
SCRATCH = PIN_ROOT / "test-ctl"


class TinyPolicy(Policy):
    """kv_fetch/collective: RLI table (RLI 0 -> level 0, 1..2 -> 2, >= 3 -> 5);
    p2d: MLU table (MLU >= 0.5 -> 1, >= 0.25 -> 3, else 6), auto-scavenge.
    Hopeless when the request's deadline has passed. Records every call (for RED checks)."""

    name = "tiny"

    def __init__(self, config: PolicyConfig | None = None, hopeless: bool | None = None) -> None:
        super().__init__(config)
        self.calls: list[tuple[Request, Stage, Flow, int]] = []
        self.hopeless = hopeless

    def entry(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> FlowEntry:
        self.calls.append((request, stage, flow, now_ns))
        if stage.name == "p2d":
            return FlowEntry(
                mode=MODE_MLU,
                levels=[6, 3, 1],
                thresholds=[mlu_fixed(0.25), mlu_fixed(0.5)],
                flags=F_AUTO_SCAVENGE,
                deadline_ns=request.deadline_ns,
                total_bytes=flow.bytes,
                ps_per_byte=ps_per_byte(self.config.ref_rate_bps),
            )
        return FlowEntry(mode=MODE_RLI, levels=[0, 2, 5], thresholds=[1, 3], target_layer=flow.target_layer)

    def is_hopeless(self, request: Request, now_ns: int) -> bool:
        if self.hopeless is not None:
            return self.hopeless
        return now_ns > request.deadline_ns


def scratch_root() -> Path:
    """A fresh pin root under bpffs (stands in for /sys/fs/bpf/mfs)."""
    return SCRATCH / uuid.uuid4().hex[:12]


def remove_root(root: Path) -> None:
    """Remove a scratch pin root made by the tests (pins, then directories)."""
    if not root.exists():
        return
    for p in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if p.is_dir():
            p.rmdir()
        else:
            p.unlink()
    root.rmdir()
    try:
        SCRATCH.rmdir()
    except OSError:
        pass


def count_as_kernel(maps: PinnedMaps, key: bytes, st: FlowState) -> str:
    """Plant `st` where the classifier counts for the 5-tuple `key`'s entry (what the kernel
    would have done): at the state slot the entry names where its gen owns it ("slot"), else in
    flow_state ("lookup")."""
    raw = maps.flows.lookup(key)
    assert raw is not None, "no entry"
    e = FlowEntry.unpack(raw)
    if maps.slot_state(e.state_slot, e.gen) is not None:
        st = FlowState(st.gen, st.cur_level, st.sent_bytes, st.sent_pkts, st.flags, owner=e.gen)
        maps.states.update(e.state_slot.to_bytes(4, "little"), st.pack())
        return "slot"
    maps.flow_state.update(key, st.pack())
    return "lookup"
