"""Kernel state without a second lookup: the `states` array (BPF_F_MMAPABLE) mapped into this
process, and the chunks of it this controller owns (`state_owners`), layout version 6.

A registration's entry names a slot of `states` (FlowEntry.state_slot); the classifier counts
the flow's bytes and keeps its level there, an inlined array access, instead of getting a
second socket storage (`sk_state`) or looking the 5-tuple up again (`flow_state`). It trusts
the slot only while the slot's `owner` is the entry's gen: `owner` is the one word of a state
user space writes. The rest is the kernel's, as in the other state maps, so no user-space
write loses or misplaces a count (issue 9 section 2).

- claim: the slot's gen is 0 (no registration is 0), then its owner is set to the new
  registration's gen, then the entry naming the slot is written. The kernel finds gen != the
  entry's on the first packet and restarts the state at the entry's sent_base.
- release: owner 0, then gen 0, after the entry is gone or overwritten. A packet of a stale
  entry (replaced, or read just before the delete) finds another owner and takes the lookup
  path: it never counts into a slot another registration owns. (A packet that passed the owner
  check just before a release and counts just after the next claim's restart adds its bytes
  to the next registration once: one packet, at a slot's reuse.)
- A rewrite of a decision keeps gen and slot: the counts stay.

Each store is an aligned 64-bit store into the shared mapping (single-copy atomic on x86-64
and arm64, as the cursors' in mfs_tc.cursors).

Slots are owned in chunks of STATE_CHUNK: a controller inserts the chunk's index into
`state_owners` with BPF_NOEXIST (atomic across processes), so claiming a slot costs no syscall
while the chunk has room. Chunks are given back when the controller closes; `gc` frees the
chunks of owners that are gone. A forked child starts with no chunks of its own (it never hands
out its parent's free slots). When no chunk is left, a claim returns STATE_NONE and the flow
keeps its state in the lookup maps, as on a kernel without mappable arrays: slower per packet,
never wrong. A full array is looked at again one second later (or after a release), not at
every registration.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import time
import weakref
from array import array
from collections.abc import Callable

from . import bpfsys
from .bpfsys import BpfMap, BpfSyscallError
from .cursors import map_array
from .errors import MapFullError
from .layout import STATE_CHUNK, STATE_NONE, STATE_SIZE, STATES_MAX, CursorOwner, FlowState, Owner

__all__ = ["STATE_QUADS", "StateSlots", "clear_chunk", "map_states"]

STATE_QUADS = STATE_SIZE // 8  # 64-bit words per slot: gen, cur_level, sent_bytes, sent_pkts, flags, owner
_GEN, _OWNER = 0, STATE_QUADS - 1
_RETRY_NS = 1_000_000_000  # a full array is scanned again after this long


def _call(ref: weakref.WeakMethod[Callable[[], None]]) -> None:
    m = ref()
    if m is not None:
        m()


def clear_chunk(words: memoryview, chunk: int) -> None:
    """Owner 0, then gen 0, for every slot of `chunk` (`words`: the mapped array as 64-bit
    words): no entry counts there any more, and the next claim restarts its state."""
    base = chunk * STATE_CHUNK * STATE_QUADS
    end = base + STATE_CHUNK * STATE_QUADS
    zeros = array("Q", bytes(8 * STATE_CHUNK))
    words[base + _OWNER : end : STATE_QUADS] = zeros
    words[base + _GEN : end : STATE_QUADS] = zeros


class StateSlots:
    """This process's chunks of the mapped `states` array (PinnedMaps.state_words: the array as
    64-bit words; slot s is words[6 s : 6 s + 6], FlowState's fields)."""

    def __init__(self, words: memoryview, owners: BpfMap, owner: Owner) -> None:
        self.owners = owners
        self.owner = owner
        self.words = words
        self.max_entries = len(words) // STATE_QUADS
        self.nchunks = self.max_entries // STATE_CHUNK
        self._free: list[int] = []
        self.chunks: set[int] = set()
        self._next = random.randrange(self.nchunks) if self.nchunks else 0
        self._retry_at = 0  # while the array is full: when to look for a chunk again
        # a forked child must not hand out its parent's free slots: it starts with no chunks
        ref = weakref.WeakMethod(self._forked)
        os.register_at_fork(after_in_child=lambda: _call(ref))

    def _forked(self) -> None:
        self.owner = Owner.of()
        self._free = []
        self.chunks = set()
        self._next = random.randrange(self.nchunks) if self.nchunks else 0
        self._retry_at = 0

    @classmethod
    def of(cls, words: memoryview | None, owners: object, owner: Owner) -> StateSlots | None:
        """None where `states` is not mapped (no BPF_F_MMAPABLE: kernel < 5.5, or an fd without
        write access): flows then keep their state in the lookup maps."""
        if words is None or not isinstance(owners, BpfMap):
            return None
        return cls(words, owners, owner)

    # -- reading
    def read(self, slot: int) -> FlowState:
        """The state at `slot` as it is now (owner included)."""
        i = slot * STATE_QUADS
        return FlowState(*self.words[i : i + STATE_QUADS].tolist())

    def owner_gen(self, slot: int) -> int:
        return self.words[slot * STATE_QUADS + _OWNER]

    @property
    def free(self) -> int:
        """Slots of this process's chunks that no registration holds."""
        return len(self._free)

    # -- claiming
    def claim(self, gen: int) -> int:
        """A slot for the registration `gen` (its owner set), or STATE_NONE when no chunk is
        left. gen 0 is no registration."""
        free = self._free
        if free or self._grow(1):
            s = free.pop()
            self.words[s * STATE_QUADS + _OWNER] = gen
            return s
        return STATE_NONE

    def claim_many(self, n: int, gen: int) -> list[int]:
        """Slots for `n` flows of the registration `gen`; STATE_NONE for those no chunk is left for."""
        free = self._free
        if len(free) < n:
            self._grow(n)
        k = min(n, len(free))
        got = free[len(free) - k :]
        del free[len(free) - k :]
        w = self.words
        for s in got:
            w[s * STATE_QUADS + _OWNER] = gen
        if k < n:
            got += [STATE_NONE] * (n - k)
        return got

    def release(self, slot: int, gen: int) -> None:
        """Give the slot of registration `gen` back (after its entry is gone or overwritten).
        A slot another registration owns by now (gc freed the chunk, thinking this process
        gone) is left alone."""
        if slot >= self.max_entries:
            return
        i = slot * STATE_QUADS
        w = self.words
        if w[i + _OWNER] != gen:
            return
        w[i + _OWNER] = 0
        w[i + _GEN] = 0
        self._free.append(slot)
        self._retry_at = 0

    def release_many(self, slots: list[int], gen: int) -> None:
        for s in slots:
            if s != STATE_NONE:
                self.release(s, gen)

    def _grow(self, want: int) -> bool:
        """Claim chunks until `want` slots are free (or none is left). True if any was claimed."""
        now = time.monotonic_ns()
        if now < self._retry_at:
            return False
        val = CursorOwner(0, self.owner).pack()
        got = False
        n = self.nchunks
        tries = 0
        while len(self._free) < want and tries < n:
            c = self._next
            self._next = (c + 1) % n
            tries += 1
            try:
                self.owners.update(c.to_bytes(4, "little"), val, bpfsys.BPF_NOEXIST)
            except MapFullError:
                break
            except BpfSyscallError as exc:
                if exc.errno == errno.EEXIST:
                    continue
                raise
            clear_chunk(self.words, c)  # what a gone owner left there counts nowhere
            self.chunks.add(c)
            self._free.extend(range((c + 1) * STATE_CHUNK - 1, c * STATE_CHUNK - 1, -1))
            got = True
        if len(self._free) < want:
            self._retry_at = now + _RETRY_NS
        return got

    def close(self) -> None:
        """Give back this process's chunks (where still its own). The controller calls it after
        its flows are gone; the mapping is the maps' (PinnedMaps.close unmaps it)."""
        for c in self.chunks:
            k = c.to_bytes(4, "little")
            raw = self.owners.lookup(k)
            if raw is not None and CursorOwner.unpack(raw).owner == self.owner:
                clear_chunk(self.words, c)
                self.owners.delete(k)
        self.chunks.clear()
        self._free.clear()


def map_states(states: object) -> tuple[mmap.mmap, memoryview] | None:
    """`states` mapped (and as 64-bit words), or None where it cannot be: not an mmapable array
    of this layout's shape, or the kernel or this fd refuses."""
    if not isinstance(states, BpfMap):
        return None
    info = states.info
    if (
        not info.flags & bpfsys.BPF_F_MMAPABLE
        or info.value_size != STATE_SIZE
        or info.max_entries > STATES_MAX
        or info.max_entries % STATE_CHUNK
    ):
        return None
    mm = map_array(states.fd, info.max_entries, STATE_SIZE)
    if mm is None:
        return None
    return mm, memoryview(mm).cast("Q")[: info.max_entries * STATE_QUADS]
