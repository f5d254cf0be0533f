"""Root qdisc backends that enforce the levels as strict priorities.

Each backend is the list of `tc` commands that builds it (what `mfs-tc plan` prints is exactly
what attach runs) and the skb->priority value the classifier writes for each level:

  ets     root ets, K strict bands; skb->priority = <handle>:<band+1> selects the band directly
  mqprio  root mqprio with hardware DCB offload (the NIC enforces priority); skb->priority = level
  htb     root htb shaped at the link rate, one leaf per level with `prio i`, a tiny guaranteed rate
          and ceil = link rate, so spare bandwidth goes to the lowest prio value first (strict
          priority among borrowing classes); skb->priority = <handle>:<10+i>
  none    no qdisc change, packets are only marked (skb->priority = level, DSCP)

`auto` takes the first of ets, mqprio, htb that the kernel (and, for mqprio, the device) has.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

from .errors import KernelFeatureError
from .maps import pid_alive

HANDLE_MAJOR = 0x4D46  # "MF"
HANDLE = f"{HANDLE_MAJOR:x}:"
BACKENDS = ("ets", "mqprio", "htb", "none")
HTB_LEAF_MINOR = 0x10
HTB_QUANTUM = 6056  # > a few MTUs: DRR share among equal prios
MIN_LEAF_RATE_BPS = 8_000


def min_htb_rate_bps(nlevels: int) -> int:
    """The lowest link rate the HTB backend accepts: every level's guaranteed leaf rate
    (MIN_LEAF_RATE_BPS) together may take at most half of it, the rest is shared by priority."""
    return 2 * nlevels * MIN_LEAF_RATE_BPS


@dataclass(frozen=True)
class Backend:
    name: str
    nlevels: int
    rate_bps: int | None = None
    default_level: int = 0

    def priority(self, level: int) -> int:
        """skb->priority the classifier writes for `level`."""
        if self.name == "htb":
            return (HANDLE_MAJOR << 16) | (HTB_LEAF_MINOR + level)
        if self.name == "ets":
            return (HANDLE_MAJOR << 16) | (level + 1)
        return level

    def class_of(self, level: int) -> str:
        """The qdisc class (tc notation) that carries `level`, for status output."""
        if self.name == "htb":
            return f"{HANDLE}{HTB_LEAF_MINOR + level:x}"
        if self.name == "ets":
            return f"{HANDLE}{level + 1:x}"
        if self.name == "mqprio":
            return f"tc {level}"
        return "-"

    def commands(self, dev: str) -> list[list[str]]:
        """The tc commands that install this backend as the root qdisc of `dev`."""
        k = self.nlevels

        def root(kind: str, *args: str) -> list[str]:
            return ["tc", "qdisc", "replace", "dev", dev, "root", "handle", HANDLE, kind, *args]

        def htb_class(parent: str, classid: str, *args: str) -> list[str]:
            return ["tc", "class", "replace", "dev", dev, "parent", parent, "classid", classid, "htb", *args]

        if self.name == "none":
            return []
        prio_map = [str(min(p, k - 1)) for p in range(16)]
        if self.name == "ets":
            return [root("ets", "bands", str(k), "strict", str(k), "priomap", *prio_map)]
        if self.name == "mqprio":
            queues = [f"1@{i}" for i in range(k)]
            return [root("mqprio", "num_tc", str(k), "map", *prio_map, "queues", *queues, "hw", "1", "mode", "dcb")]
        if self.name == "htb":
            if not self.rate_bps:
                raise ValueError("the htb backend needs a rate (the link speed, or --rate)")
            rate = self.rate_bps
            leaf = max(MIN_LEAF_RATE_BPS, rate // (100 * k))
            burst = str(max(rate // 8 // 500, 3 * 65536))  # 2 ms at rate, at least three GSO packets
            cmds = [
                root("htb", "default", f"{HTB_LEAF_MINOR + self.default_level:x}"),
                htb_class(HANDLE, f"{HANDLE}1", "rate", f"{rate}bit", "ceil", f"{rate}bit", "burst", burst, "cburst", burst),
            ]
            for i in range(k):
                cmds.append(
                    htb_class(
                        f"{HANDLE}1",
                        self.class_of(i),
                        "rate",
                        f"{leaf}bit",
                        "ceil",
                        f"{rate}bit",
                        "prio",
                        str(i),
                        "quantum",
                        str(HTB_QUANTUM),
                        "burst",
                        burst,
                        "cburst",
                        burst,
                    )
                )
            return cmds
        raise ValueError(f"unknown qdisc backend {self.name!r}: expected one of {', '.join(BACKENDS)}")


class ProbeError(KernelFeatureError):
    """The qdisc probe could not run (no privileges for a network namespace, no unshare)."""


_TRIALS = {
    "ets": "root ets bands 2 strict 2",
    "mqprio": "root mqprio num_tc 2 map 0 1 queues 1@0 1@1 hw 0",
    "htb": "root htb",
    "clsact": "clsact",
}
_PROBE_SCRIPT = """
ip link add p0 numtxqueues 8 numrxqueues 8 type veth peer name p1 numtxqueues 8 numrxqueues 8 || exit 3
ip link set p0 up
for kind in "$@"; do
  eval "args=\\$trial_$kind"
  if tc qdisc add dev p0 $args 2>/dev/null; then echo "$kind 1"; else echo "$kind 0"; fi
  if [ "$kind" = clsact ]; then tc qdisc del dev p0 clsact; else tc qdisc del dev p0 root; fi 2>/dev/null
done
"""
STALE_PROBE = re.compile(r"^mfsprobe-(?P<pid>\d+)-[0-9a-f]+$")


def probe_qdisc_kinds(kinds: tuple[str, ...] = ("ets", "mqprio", "htb", "clsact")) -> dict[str, bool]:
    """Which qdisc kinds the running kernel has, tried on a veth in an anonymous network
    namespace (`unshare --net`; without root inside a user namespace too, where the kernel
    allows it). The namespace belongs to the probing process only: it disappears with it, however
    it ends (SIGKILL included), and the host's own interfaces are never touched. Raises
    ProbeError when the probe cannot run at all."""
    cleanup_stale_probes()  # names left by versions that probed in a named namespace
    unknown = [k for k in kinds if k not in _TRIALS]
    if unknown:
        raise ValueError(f"no probe for qdisc kinds {unknown}")
    env = dict(os.environ, **{f"trial_{k}": v for k, v in _TRIALS.items()})
    base = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--net"]
    try:
        r = subprocess.run(
            base + ["sh", "-c", _PROBE_SCRIPT, "probe", *kinds], capture_output=True, text=True, env=env, timeout=30
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        raise ProbeError(f"could not probe the kernel's qdiscs ({exc}): install util-linux (unshare)") from None
    found = dict(line.split() for line in r.stdout.splitlines() if len(line.split()) == 2)
    if r.returncode != 0 or set(found) != set(kinds):
        why = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        raise ProbeError(
            f"could not probe which qdiscs this kernel has: a throwaway network namespace was refused ({why}); "
            "run as root, or name the backend (--qdisc htb --rate RATE, or --qdisc none)"
        )
    return {k: found[k] == "1" for k in kinds}


def cleanup_stale_probes() -> list[str]:
    """Delete `mfsprobe-<pid>-<hex>` namespaces whose pid is gone (left by a probe of an older
    mfs-tc that was killed). Returns their names; needs root to delete (else returns [])."""
    removed: list[str] = []
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return removed
    for name in names:
        m = STALE_PROBE.match(name)
        if not m or pid_alive(int(m.group("pid"))) or os.geteuid() != 0:
            continue
        if subprocess.run(["ip", "netns", "del", name], capture_output=True).returncode == 0:
            removed.append(name)
    return removed
