"""Who may open which pinned map: the access group of an attached interface (docs/access.md).

attach pins every map root-owned, mode 0600. `attach --group G` (config: access_group) then gives
group G exactly what a serving process needs, per map, through the pin's file mode (bpffs checks
the inode mode against the open flags of BPF_OBJ_GET; each fd then carries only that access):

  config, levels   g=r   the layout check, level count, DSCP per level
  sk_flows         g=rw  decisions on the process's own sockets (the kernel resolves the key, an
                         fd, in the caller's fd table: nobody reaches another process's sockets)
  sk_state         g=r   the kernel's counts of its own sockets (same fd keying)
  requests         g=w   request records (cursor, scavenger flag) written by key, never read or
                         listed (no lookup, no get_next_key on a write-only fd): a member's random
                         64-bit keys are its capability, another's cannot be found
  everything else  ---   flows, flow_state, stats, rules, rule_stats and the tcx link are root's

Pin directories are root's, 0755 (pinroot.py): members cannot rename, unlink or add pins. Attach,
detach, the qdisc and tc filters need CAP_NET_ADMIN/CAP_BPF, which members do not have.

The table is the `member` column of layout.MAP_SPECS. It also decides how a process that is not root
opens the maps (maps.PinnedMaps): each with exactly these flags, the root-only ones not at all.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from .bpfsys import BPF_F_RDONLY, BPF_F_WRONLY
from .errors import KernelFeatureError, MfsError, PermissionDeniedError
from .layout import MAP_SPECS

READ, WRITE = "r", "w"
# what the access group (and any process that is not root) gets of each pinned map: the `member`
# column of the one map-spec table (layout.MAP_SPECS)
MEMBER_ACCESS: dict[str, str] = {name: spec.member for name, spec in MAP_SPECS.items()}
ROOT_MODE = 0o600
_GROUP_BITS = {READ: stat.S_IRGRP, WRITE: stat.S_IWGRP}
SYSCTL = Path("/proc/sys/kernel/unprivileged_bpf_disabled")
# Linux 5.19 (commit c8644cd0efe7) made kernel.unprivileged_bpf_disabled refuse only map creation
# and program load; before it, every bpf() command of a process without CAP_BPF got EPERM
OBJ_GET_UNPRIV_SINCE = (5, 19)


def pin_mode(name: str, group: bool) -> int:
    """The file mode of pin `name`: 0600, plus the access group's bits when there is one."""
    mode = ROOT_MODE
    if group:
        for a in MEMBER_ACCESS.get(name, ""):
            mode |= _GROUP_BITS[a]
    return mode


def open_flags(name: str) -> int | None:
    """BPF_OBJ_GET file_flags for a process that is not root: the least it needs, or None (root's)."""

    a = MEMBER_ACCESS.get(name, "")
    if not a:
        return None
    return {READ: BPF_F_RDONLY, WRITE: BPF_F_WRONLY, READ + WRITE: 0}[a]


def resolve_group(group: str | int | None) -> int | None:
    """The gid of a group name or number (None: no access group). Unknown names are an error."""
    if group is None or group == "":
        return None
    if isinstance(group, int) or str(group).isdigit():
        gid = int(group)
        if gid == 0:
            raise MfsError("--group 0 is root's group: pick a group for the serving processes (e.g. `groupadd mfs`)")
        return gid
    try:
        return grp.getgrnam(str(group)).gr_gid
    except KeyError:
        raise MfsError(f"--group {group!r}: no such group: create it (`groupadd {group}`) or give a gid") from None


def group_name(gid: int | None) -> str:
    if gid is None:
        return "none"
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


def set_pin_modes(pin: Path, gid: int | None, names: tuple[str, ...]) -> None:
    """Give each pin in `pin` its owner (root, group `gid` or root's) and mode (pin_mode)."""
    for name in names:
        p = pin / name
        mode = pin_mode(name, gid is not None)
        try:
            os.chown(p, 0, gid if gid is not None and mode & 0o070 else 0, follow_symlinks=False)
            os.chmod(p, mode)
        except FileNotFoundError:
            continue


def pins_gid(pin: Path) -> int | None:
    """The access group the pins in `pin` were given (None: root-only)."""
    try:
        st = os.stat(pin / "config")
    except OSError:
        return None
    return st.st_gid if st.st_gid != 0 and st.st_mode & 0o070 else None


def is_root() -> bool:
    return os.geteuid() == 0


def _who() -> str:
    uid = os.geteuid()
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def denied(path: Path, what: str, attach_arg: str) -> PermissionDeniedError:
    """The one-line error for a process that cannot open pin `path` of interface `what`."""
    name = path.name
    gid = pins_gid(path.parent)
    fix_root = "or run it as root"
    if gid is None:
        return PermissionDeniedError(
            f"open {path}: permission denied: the maps of {what} are root's only: give serving processes a "
            f"group (`mfs-tc attach {attach_arg} --group GROUP`, or access_group in the config) and run "
            f"this process in it, {fix_root}"
        )
    if gid not in os.getgroups() and gid != os.getegid():
        return PermissionDeniedError(
            f"open {path}: permission denied: this process ({_who()}) is not in {group_name(gid)}, the access "
            f"group of {what}: add the user (`usermod -aG {grp_label(gid)} USER`, then start the process "
            f"again), {fix_root}"
        )
    have = MEMBER_ACCESS.get(name, "")
    return PermissionDeniedError(
        f"open {path}: permission denied: the access group of {what} may "
        + (f"only {'read' if have == READ else 'write'} {name}" if have in (READ, WRITE) else f"not open {name}")
        + f" ({name} is root's: docs/access.md); {fix_root}"
    )


def grp_label(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def root_only(name: str, op: str = "use") -> PermissionDeniedError:
    """The error for a process that is not root using a map the access group does not get."""
    if name == "flows":
        hint = (
            "5-tuple entries are root's: register the connected socket instead (socket storage, its "
            "own sockets only), or run as root"
        )
    else:
        hint = "run it as root (status, flows, gc and rules are operator commands)"
    return PermissionDeniedError(
        f"{op} {name}: root only (serving processes of the access group get no " f"access to {name}: docs/access.md): {hint}"
    )


# ---- the kernel ---------------------------------------------------------------------------------
def unprivileged_bpf_disabled() -> int | None:
    try:
        return int(SYSCTL.read_text().strip())
    except (OSError, ValueError):
        return None


# __sk_buff.tstamp_type (a monotonic delivery time marked as such): the classifier reads TCP's
# departure stamps from it (mfs_classifier.c packet_now); before it, the loader builds without
TSTAMP_TYPE_SINCE = (5, 18)


def kernel_version(release: str | None = None) -> tuple[int, int]:
    rel = release or os.uname().release
    parts = rel.split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def member_open_problem(release: str | None = None, sysctl: int | None = -1) -> str | None:
    """Why a process without CAP_BPF cannot open pinned maps on this kernel (None: it can)."""
    val = unprivileged_bpf_disabled() if sysctl == -1 else sysctl
    if kernel_version(release) >= OBJ_GET_UNPRIV_SINCE or not val:
        return None
    fix = (
        "`sysctl -w kernel.unprivileged_bpf_disabled=0` (then the kernel also lets unprivileged users "
        "load socket filters; a value of 1 can only be changed by a reboot)"
        if val == 2
        else "kernel.unprivileged_bpf_disabled=0 on the kernel command line or sysctl.d, and reboot (1 is locked)"
    )
    return (
        f"kernel {os.uname().release if release is None else release} with kernel.unprivileged_bpf_disabled="
        f"{val} refuses every bpf() call of a process without CAP_BPF, so serving processes of an access "
        f"group cannot open the pinned maps: use a kernel >= 5.19 (which refuses only map creation and "
        f"program load), or {fix}, or give serving processes CAP_BPF (CAP_SYS_ADMIN before 5.8)"
    )


def check_member_kernel() -> None:
    """attach --group: refuse where members could not open the maps anyway (and say why)."""
    problem = member_open_problem()
    if problem:
        raise KernelFeatureError(f"--group: {problem}")
