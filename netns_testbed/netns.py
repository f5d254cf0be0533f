"""Network-namespace plumbing: run `ip`/`tc` in a namespace, enter one from a thread.

Python 3.11 has no os.setns, so `enter_netns` calls setns(2) through libc. setns with
CLONE_NEWNET only changes the calling thread's network namespace (the mount namespace, and so
bpffs pins, stay those of the root), and a socket keeps the namespace it was created in: the
testbed creates each host's sockets in a thread that entered that host's namespace.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from mfs_tc import netlink
from mfs_tc.errors import MfsError, PermissionDeniedError

CLONE_NEWNET = 0x40000000
NETNS_RUN = "/run/netns"
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    """`ip [-n ns] ...` (no remount of /sys, unlike `ip netns exec`); other commands go through
    the loader's mfs_tc.netlink.run_command (same errors)."""
    return netlink.run_command(["ip", *(["-n", ns] if ns else []), *args], check=check)


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN))
    except FileNotFoundError:
        return []


def enter_netns(ns: str) -> None:
    """Move the calling thread into network namespace `ns` (a name under /run/netns)."""
    path = os.path.join(NETNS_RUN, ns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise MfsError(f"network namespace {ns!r} does not exist") from exc
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            if err == 1:
                raise PermissionDeniedError(f"setns({ns}): not permitted: run as root")
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in_netns(ns: str, fn: Callable[[], T], timeout: float = 30) -> T:
    """Run `fn` in a short-lived thread inside namespace `ns` and return its result."""
    value: list[T] = []  # fn's result, or
    error: list[BaseException] = []  # what it raised

    def body() -> None:
        try:
            enter_netns(ns)
            value.append(fn())
        except BaseException as exc:  # handed to the caller
            error.append(exc)

    t = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise MfsError(f"call in namespace {ns} timed out after {timeout}s")
    if error:
        raise error[0]
    return value[0]
