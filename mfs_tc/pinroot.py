"""The pin root (<bpffs>/mfs) and the directories under it, made and checked so that no other
user can move them.

bpffs is mounted mode 1777 (sticky, like /tmp), so any user may create `mfs` there before root
does, and the owner of a directory can rename what is inside it. attach therefore uses a pin
directory only when every level from `mfs/` down is a real directory (not a symlink) owned by
root and writable by nobody else, and the bpffs root itself is sticky (so nobody but root can
rename `mfs` away). Under those conditions only root can change any component of the path, so
using it by name after the check cannot follow a swapped directory. A level that fails is an
error naming the owner and the fix; nothing is created or removed under it.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from .errors import PermissionDeniedError


class UnsafePinRootError(PermissionDeniedError):
    """A directory on the way to the pins is owned or writable by someone other than root."""


def _owner(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _check_level(p: Path, st: os.stat_result, root: Path) -> None:
    fix = f"check what is in it, remove it (`rm -rf {root}`) and attach again"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafePinRootError(f"{p} is not a directory (a symlink or a file): {fix}")
    if st.st_uid != 0:
        raise UnsafePinRootError(
            f"{p} is owned by {_owner(st.st_uid)}, not root: that user could swap the pin " f"directories under it; {fix}"
        )
    if st.st_mode & 0o022:
        raise UnsafePinRootError(
            f"{p} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): they could "
            f"swap the pin directories under it; `chmod 0755 {p}` (or {fix.split(': ')[0]})"
        )


def secure_pin_dir(pin: Path, root: Path, create: bool) -> bool:
    """Check (and with `create`, make: root-owned, 0755) every directory from `root` (the pin
    root, <bpffs>/mfs) down to `pin`. Returns whether `pin` exists. Raises UnsafePinRootError
    on a level another user owns or can write, or when <bpffs> is world-writable but not sticky."""
    pin, root = Path(pin), Path(root)
    rel = pin.relative_to(root)
    bpffs = root.parent
    try:
        top = os.lstat(bpffs)
    except FileNotFoundError:
        return False
    if top.st_mode & 0o002 and not top.st_mode & stat.S_ISVTX:
        raise UnsafePinRootError(
            f"{bpffs} is writable by everyone without the sticky bit (mode "
            f"{stat.S_IMODE(top.st_mode):04o}): any user could rename {root} away; `chmod 1777 {bpffs}`"
        )
    level = root
    for part in ("",) + rel.parts:
        level = level / part if part else level
        try:
            st = os.lstat(level)
        except FileNotFoundError:
            if not create:
                return False
            try:
                os.mkdir(level, 0o755)
                os.chmod(level, 0o755)  # whatever the umask was (nobody else can replace it in between)
            except FileExistsError:
                pass  # made by someone at the same moment: checked below like any other
            st = os.lstat(level)
        _check_level(level, st, root)
    return True
