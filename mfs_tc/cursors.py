"""Request cursors without a syscall: the `cursors` array (BPF_F_MMAPABLE) mapped into this
process, and the slots of it that controllers own (`cursor_owners`).

A request's record names its slot (RequestRecord.slot); the classifier reads the cursor at
that slot (layout version 4). Moving a cursor is one aligned 32-bit store into the shared
mapping: no syscall, so `at_layer` costs what the Python call costs.

Memory ordering: the store goes through a memoryview cast to "i" (CPython packs one C int with
a fixed-size memcpy, compiled to a single 4-byte store) at a 4-byte aligned address (the
mapping is page aligned, slots are 16 bytes). On x86-64 and arm64 an aligned 32-bit store is
single-copy atomic: a program on another CPU reads the old or the new cursor, never a torn
one. Nothing else is ordered against it: a cursor is one value, read on its own by each packet.

A slot (layout version 5) also holds the request's flags (MFS_R_SCAVENGER) and its key, so
that a flow entry naming the slot (entry.slot) lets the classifier read its request there
without a hash lookup. The key is a 64-bit store at an 8-byte aligned address (single-copy
atomic as the cursor's). The classifier trusts a slot only while its key is the entry's
request id: a claim stores cursor and flags before the key, a release clears the key before
the slot is freed. (A packet that reads the key just before a release and the cursor just
after the next claim may see the next request's cursor once: one packet, at a slot's reuse.)

Slots are owned: a controller claims slot s by inserting s into `cursor_owners` with
BPF_NOEXIST (the kernel makes that atomic across processes, so two controllers never share a
slot), sets the cursor, and only then writes the request record that names s. It frees the slot
(deletes its owner entry, if still its own) when the request ends; `gc` frees the slots of
owners that are gone. Each process looks for free slots from a random start onwards, so a
claim is one insert while the array has room; when every slot is taken, one pass over the
array (~16k refused inserts, some 20 ms) ends in a MapFullError naming gc.
"""

from __future__ import annotations

import errno
import mmap
import random

from . import bpfsys
from .bpfsys import BpfMap, BpfSyscallError
from .errors import MapFullError
from .layout import CURSOR_SIZE, CURSORS_MAX, CursorOwner, Owner

__all__ = ["CursorSlots", "map_array", "mmap_supported"]

_INTS_PER_SLOT = CURSOR_SIZE // 4  # the cursor is the first int of its 16-byte slot, the flags the second
_QUADS_PER_SLOT = CURSOR_SIZE // 8  # the request key is the second 8-byte word


def map_array(fd: int, max_entries: int, value_size: int = CURSOR_SIZE) -> mmap.mmap | None:
    """A BPF_F_MMAPABLE array mapped shared and writable (whole pages), or None where the map or
    kernel does not allow it (no BPF_F_MMAPABLE: EINVAL; an fd not opened for writing:
    EACCES/EPERM). Also mfs_tc.stateslots'."""
    size = -(-max_entries * value_size // mmap.PAGESIZE) * mmap.PAGESIZE
    try:
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError:
        return None


class CursorSlots:
    """The mapped `cursors` array and this process's claims on it. `view` is the array as C
    ints; slot s's cursor is view[2 * s] (`index(s)`)."""

    def __init__(self, cursors: BpfMap, owners: BpfMap, mm: mmap.mmap) -> None:
        self.cursors = cursors
        self.owners = owners
        self._mm = mm
        self.view = memoryview(mm).cast("i")
        self._keys = memoryview(mm).cast("Q")
        self.max_entries = cursors.info.max_entries
        self._next = random.randrange(self.max_entries)  # where this process looks for a free slot

    @classmethod
    def open(cls, cursors: BpfMap, owners: BpfMap) -> CursorSlots | None:
        """None where `cursors` cannot be mapped (made without BPF_F_MMAPABLE, kernel < 5.5):
        controllers then keep cursors in the request records (one update syscall each)."""
        info = cursors.info
        if not info.flags & bpfsys.BPF_F_MMAPABLE or info.max_entries > CURSORS_MAX:
            return None
        mm = map_array(cursors.fd, info.max_entries)
        return None if mm is None else cls(cursors, owners, mm)

    def close(self) -> None:
        """Unmap (writes through handles that still hold `view` raise ValueError after this)."""
        self.view.release()
        self._keys.release()
        self._mm.close()

    @staticmethod
    def index(slot: int) -> int:
        return slot * _INTS_PER_SLOT

    def read(self, slot: int) -> int:
        return self.view[slot * _INTS_PER_SLOT]

    def write(self, slot: int, cursor: int) -> None:
        self.view[slot * _INTS_PER_SLOT] = cursor

    def read_flags(self, slot: int) -> int:
        return self.view[slot * _INTS_PER_SLOT + 1] & 0xFFFFFFFF

    def set_flags(self, slot: int, flags: int) -> None:
        """The request's flags as the classifier reads them from the slot (kept equal to its
        record's by whoever sets them there)."""
        self.view[slot * _INTS_PER_SLOT + 1] = flags - (1 << 32) if flags >= 1 << 31 else flags

    def read_key(self, slot: int) -> int:
        return self._keys[slot * _QUADS_PER_SLOT + 1]

    def publish(self, slot: int, request_key: int) -> None:
        """The request the classifier reads at this slot (0: none)."""
        self._keys[slot * _QUADS_PER_SLOT + 1] = request_key

    def clear_key(self, slot: int) -> None:
        """No request is read at this slot any more (before it is freed)."""
        self.publish(slot, 0)

    def claim(self, request_key: int, owner: Owner, cursor: int = 0, flags: int = 0) -> int:
        """A free slot, now owned by `owner` for `request_key`, its cursor set to `cursor`
        and its flags to `flags`, then its key published (the classifier reads it from then)."""
        val = CursorOwner(request_key, owner).pack()
        n = self.max_entries
        full = MapFullError(
            f"all {n} cursor slots are taken: finish requests (`done()`) or run `mfs-tc gc` "
            f"(it frees the slots of controllers that are gone)"
        )
        for _ in range(n):
            s = self._next
            self._next = (s + 1) % n
            try:
                self.owners.update(s.to_bytes(4, "little"), val, bpfsys.BPF_NOEXIST)
            except MapFullError:
                raise full from None
            except BpfSyscallError as exc:
                if exc.errno == errno.EEXIST:
                    continue
                raise
            self.write(s, cursor)
            self.set_flags(s, flags)
            self.publish(s, request_key)
            return s
        raise full

    def set_key(self, slot: int, request_key: int, owner: Owner) -> None:
        """Record another request key for a slot this process owns (a private key retried)."""
        self.owners.update(slot.to_bytes(4, "little"), CursorOwner(request_key, owner).pack(), bpfsys.BPF_EXIST)
        self.publish(slot, request_key)

    def release(self, slot: int, owner: Owner) -> bool:
        """Free `slot` if `owner` still owns it (gc may have freed it and another controller
        claimed it since: then it stays). True if freed."""
        k = slot.to_bytes(4, "little")
        raw = self.owners.lookup(k)
        if raw is None or CursorOwner.unpack(raw).owner != owner:
            return False
        self.clear_key(slot)
        return self.owners.delete(k)


def mmap_supported() -> bool:
    """Whether this kernel maps BPF arrays into user space (BPF_F_MMAPABLE, 5.5+): a one-page
    scratch array is made, mapped and written. For `mfs-tc doctor`."""
    try:
        m = BpfMap.create(bpfsys.MAP_TYPE_BY_NAME["array"], 4, CURSOR_SIZE, 1, "mfs_probe", bpfsys.BPF_F_MMAPABLE)
    except Exception:  # noqa: BLE001 - any refusal means no
        return False
    try:
        mm = map_array(m.fd, 1)
        if mm is None:
            return False
        mm[0:4] = b"\1\0\0\0"
        raw = m.lookup(b"\0\0\0\0")
        ok = raw is not None and raw[:4] == b"\1\0\0\0"
        mm.close()
        return ok
    finally:
        m.close()
