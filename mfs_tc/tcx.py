"""tcx: the classifier on egress through a BPF link (Linux 6.6+), pinned next to the maps.

A tcx link is created with BPF_LINK_CREATE (attach type BPF_TCX_EGRESS, the device by ifindex in
the caller's network namespace) and pinned at once as <pin dir>/tcx_egress. An attach killed
before the pin leaves nothing: the link lives only as long as its fd. After the pin it stays
until detach unpins it (BPF_LINK_DETACH first, so a process still holding an fd cannot keep it
on the device). Re-attach swaps the program inside the link (BPF_LINK_UPDATE), so there is never
a moment without a classifier. Only our link is ever touched: other tcx programs on the device
are not ours to see or remove.

The bpf(2) attributes are laid out as in include/uapi/linux/bpf.h; only bpfsys.bpf is used.
"""

from __future__ import annotations

import ctypes
import errno as E
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import bpfsys
from .errors import KernelFeatureError, MfsError, PermissionDeniedError

BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_DETACH = 34
BPF_TCX_EGRESS = 47
LINK_PIN = "tcx_egress"

_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", _u32),
        ("target_ifindex", _u32),
        ("attach_type", _u32),
        ("flags", _u32),
        ("relative_fd", _u32),
        ("_pad", _u32),
        ("expected_revision", _u64),
    ]


class _LinkUpdateAttr(ctypes.Structure):
    _fields_ = [("link_fd", _u32), ("new_prog_fd", _u32), ("flags", _u32), ("old_prog_fd", _u32)]


class _LinkDetachAttr(ctypes.Structure):
    _fields_ = [("link_fd", _u32)]


class _QueryAttr(ctypes.Structure):
    _fields_ = [
        ("target_ifindex", _u32),
        ("attach_type", _u32),
        ("query_flags", _u32),
        ("attach_flags", _u32),
        ("prog_ids", _u64),
        ("prog_cnt", _u32),
        ("_pad", _u32),
        ("prog_attach_flags", _u64),
        ("link_ids", _u64),
        ("link_attach_flags", _u64),
        ("revision", _u64),
    ]


@contextmanager
def _in_netns(netns: str | None) -> Iterator[None]:
    """ifindexes in bpf(2) are resolved in the calling thread's network namespace."""
    if not netns:
        yield
        return
    from pyroute2.netns import popns, pushns

    pushns(netns)
    try:
        yield
    finally:
        popns()


def _fail(what: str, err: int) -> MfsError:
    text = f"tcx {what}: {os.strerror(err)}"
    if err in (E.EPERM, E.EACCES):
        return PermissionDeniedError(text + " (run as root, or with CAP_BPF + CAP_NET_ADMIN)")
    if err in (E.EINVAL, E.EOPNOTSUPP):
        return KernelFeatureError(text + ": this kernel has no tcx (Linux 6.6+): use --hook clsact")
    return MfsError(text)


def egress_progs(ifindex: int, netns: str | None = None) -> list[int]:
    """Ids of the programs on the device's tcx egress (KernelFeatureError: no tcx here)."""
    ids = (_u32 * 64)()
    attr = _QueryAttr(target_ifindex=ifindex, attach_type=BPF_TCX_EGRESS, prog_ids=ctypes.addressof(ids), prog_cnt=64)
    with _in_netns(netns):
        r = bpfsys.bpf(BPF_PROG_QUERY, attr)
    if r < 0:
        raise _fail("query", -r)
    return list(ids[: attr.prog_cnt])


def available(ifindex: int = 1, netns: str | None = None) -> bool:
    """Whether the kernel has tcx (a query on the device answers); False also without privilege."""
    try:
        egress_progs(ifindex, netns)
    except MfsError:
        return False
    return True


def attach_link(prog_fd: int, ifindex: int, pin: Path, netns: str | None = None) -> None:
    """Put the program on tcx egress of `ifindex` through a new link pinned at `pin`, or, when
    a link of ours is already pinned there, swap the program inside it."""
    if pin.exists():
        try:
            fd = bpfsys.obj_get(pin)
        except MfsError:
            fd = -1
        if fd >= 0:
            try:
                r = bpfsys.bpf(BPF_LINK_UPDATE, _LinkUpdateAttr(link_fd=fd, new_prog_fd=prog_fd))
            finally:
                os.close(fd)
            if r >= 0:
                return
        pin.unlink()  # a link whose device is gone (ENOLINK): replace it
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_ifindex=ifindex, attach_type=BPF_TCX_EGRESS)
    with _in_netns(netns):
        fd = bpfsys.bpf(BPF_LINK_CREATE, attr)
    if fd < 0:
        raise _fail("link create", -fd)
    try:
        bpfsys.obj_pin(fd, pin)  # from here the link outlives us; before it, it dies with the fd
    finally:
        os.close(fd)


def detach_link(pin: Path) -> bool:
    """Detach and unpin our link; False when none is pinned."""
    try:
        fd = bpfsys.obj_get(pin)
    except MfsError:
        if pin.exists():
            pin.unlink()
            return True
        return False
    try:
        bpfsys.bpf(BPF_LINK_DETACH, _LinkDetachAttr(link_fd=fd))  # defunct links answer ENOLINK: fine
    finally:
        os.close(fd)
    pin.unlink()
    return True
