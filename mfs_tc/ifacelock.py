"""One attach or detach at a time per interface: an flock on /run/mfs-tc/<netns>/<ifname>.lock.

flock belongs to the open file, so the kernel releases it when the holder exits in any way
(SIGKILL included): a crashed attach can never leave the interface locked. A second attach or
detach of the same interface does not wait: it fails at once with the holder's pid and touches
nothing (the holder may be halfway through a change that only it can finish or undo).

The lock file is removed by its holder on release, so /run/mfs-tc is left as found. That is safe
with flock because acquire checks, after locking, that the path still names the inode it locked
(a file unlinked by the previous holder between our open and our flock is not the lock any more:
we retry on the new one).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import MfsError


class BusyError(MfsError):
    """Another mfs-tc process is attaching or detaching this interface right now."""


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


@contextmanager
def interface_lock(path: Path, what: str, wait: bool = False, prune: tuple[Path, ...] = ()) -> Iterator[None]:
    """Hold the lock file `path` for the duration; BusyError if another process holds it
    (with `wait`, block until it is free instead: for short sections such as a mount). On
    release the file goes, and the directories `prune` (in order) when they are empty."""
    for _ in range(50):
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            continue  # the directory was pruned by a releasing holder in between: make it again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BusyError(
                    f"another mfs-tc is attaching or detaching {what} right now{holder}: "
                    "wait for it to finish and run this again"
                ) from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)  # locked an inode its previous holder had already unlinked: retry
            continue
        break
    else:
        raise BusyError(f"could not take the lock {path} for {what}: retry")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        try:
            os.unlink(path)  # still holding it: nobody else can own this inode yet
        except OSError:
            pass
        for d in prune:
            try:
                d.rmdir()
            except OSError:
                break
        os.close(fd)
