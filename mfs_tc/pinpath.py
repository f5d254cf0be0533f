"""Where a process finds the pinned maps, whatever mount namespace it runs in.

attach pins under /sys/fs/bpf/mfs (layout.PIN_ROOT). A serving process does not always see that
bpffs: `ip netns exec NS` gives the process a mount namespace with a fresh sysfs on /sys, which
hides /sys/fs/bpf, and a container has the mounts its runtime gave it. The pin root a process
uses is, in this order:

  1. $MFS_TC_BPFFS/mfs     a bpffs path the operator gives (a bind mount in a container);
  2. /sys/fs/bpf/mfs       where it is a bpffs (the host, `nsenter --net`, `unshare -m`);
  3. /run/mfs-tc/bpffs/mfs a bind mount of the host's bpffs that attach keeps while anything is
                           attached: /run is not remounted by `ip netns exec`.

When none of them is a bpffs the error says so, with the ways out.
"""

from __future__ import annotations

import os
from pathlib import Path

from .bpfsys import is_bpffs
from .errors import KernelFeatureError

ENV = "MFS_TC_BPFFS"
HOST_BPFFS = Path("/sys/fs/bpf")
RUN_BPFFS = Path("/run/mfs-tc/bpffs")


class BpffsNotVisibleError(KernelFeatureError):
    """No bpf filesystem (with the pins) is visible in this process's mount namespace."""


def _fstype(path: Path) -> str:
    best, kind = "", "missing"
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")):
                    if len(parts[1]) >= len(best):
                        best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def pin_root() -> Path:
    """The pin root this process should use (see the module doc), or BpffsNotVisibleError."""
    env = os.environ.get(ENV)
    if env:
        if not is_bpffs(env):
            raise BpffsNotVisibleError(
                f"{ENV}={env} is not a bpf filesystem here ({_fstype(Path(env))}): point it at the "
                f"host's bpffs bind-mounted into this namespace (e.g. `-v /sys/fs/bpf:{env}`)"
            )
        return Path(env) / "mfs"
    for bpffs in (HOST_BPFFS, RUN_BPFFS):
        if is_bpffs(bpffs):
            return bpffs / "mfs"
    raise BpffsNotVisibleError(
        f"no bpf filesystem is visible to this process: {HOST_BPFFS} is {_fstype(HOST_BPFFS)} (`ip netns "
        f"exec` remounts /sys and hides it) and {RUN_BPFFS} is not mounted (attach keeps it while "
        f"mfs-tc is attached: attach first, or start the process after). Or start it with "
        f"`nsenter --net=/run/netns/NS` instead of `ip netns exec`, or set {ENV} to the host's bpffs "
        f"bind-mounted into this mount namespace (docs/containers.md)"
    )
