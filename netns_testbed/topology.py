"""The emulated cluster: one namespace per host around a switch namespace.

    host ns  <prefix><pid>-<host>   eth0 10.201.0.N/24   --veth--   p<N> in <prefix><pid>-sw (bridge br0)

Host names follow mfs_tc.workload.ClusterShape: kv<i> (KV store), p<g>r<r> (rank r of prefill
group g), d<i> (decode). Every host's egress eth0 and every switch port p<N> (egress towards host N) is
shaped at `rate_bps` (HTB): host egress carries the host's mfs-tc classifier, switch ports run
mfs-tc in trust-dscp mode (they rank packets by the DSCP the sender's classifier wrote), which
is what a datacenter switch does. Nothing is created in the root namespace; addresses live only
inside the namespaces.

Kernel queue budgets scaled to the emulated rate (`host_queue_ms`, default 1 ms). The emulated
links run hundreds of times slower than the links they stand for, while the kernel's per-socket
budgets are in bytes: TCP small queues (`net.ipv4.tcp_limit_output_bytes`, 4 MB) and GSO packets
of up to 64 kB. At 200 Mbit/s one 64 kB packet is 2.6 ms on the wire, and the sockets of one
priority band kept 10-40 ms of data queued in it (measured). A short flow arriving in that band
(a layer's collective) waited behind them as in a FIFO, which no 100-400 Gbit/s link does. Each
host namespace therefore gets a TSQ budget of `host_queue_ms` at the link rate, and GSO packets
of at most the largest power of two within it (4-64 kB), on both ends of its veth. 0 leaves the
kernel's defaults.

Names carry the creating process's pid, so `cleanup_leftovers` removes what crashed runs left
(their pid is gone) and never touches a concurrent live run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mfs_tc.errors import MfsError
from mfs_tc.layout import PIN_ROOT
from mfs_tc.maps import pid_alive
from mfs_tc.netlink import run_command

from .netns import ip, list_netns

if TYPE_CHECKING:
    from mfs_tc.workload import ClusterShape

DEFAULT_PREFIX = "mfsb"
SUBNET = "10.201.0"
HOST_IF = "eth0"
BRIDGE = "br0"
GSO_MIN, GSO_MAX = 4096, 65536  # the GSO sizes host_queue_ms picks from (powers of two)
DEFAULT_HOST_QUEUE_MS = 1.0  # kernel queue budgets in time at the link rate (module doc)


@dataclass(frozen=True, slots=True)
class Host:
    name: str  # kv0, p0, d0
    role: str  # kv, prefill, decode
    index: int  # 1-based position: address SUBNET.index, switch port p<index>
    netns: str

    @property
    def addr(self) -> str:
        return f"{SUBNET}.{self.index}"

    @property
    def ifname(self) -> str:
        return HOST_IF

    @property
    def port(self) -> str:
        return f"p{self.index}"


@dataclass(slots=True)
class TopologyConfig:
    kv_hosts: int = 1
    prefill_groups: int = 2
    group_size: int = 2
    decode_hosts: int = 1
    rate_bps: float = 200e6
    levels: int = 8
    datapath: str = "mfs"  # "mfs": mfs-tc attached everywhere; "plain": HTB only (no classifier)
    switch_trust_dscp: bool = True
    prefix: str = DEFAULT_PREFIX
    host_queue_ms: float = DEFAULT_HOST_QUEUE_MS  # 0: the kernel's defaults
    # TCP's minimum retransmission timeout on the hosts' routes (`ip route ... rto_min`); 0: the
    # kernel's (200 ms). A starved flow's promotion waits for it (docs/datapath.md)
    rto_min_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("kv_hosts", "prefill_groups", "group_size", "decode_hosts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1")
        if self.kv_hosts + self.prefill_hosts + self.decode_hosts > 250:
            raise ValueError("at most 250 hosts")
        if not 1e6 <= self.rate_bps <= 10e9:
            raise ValueError(f"link rate {self.rate_bps:g} bit/s: use 1mbit..10gbit (e.g. 200mbit)")
        if self.datapath not in ("mfs", "plain"):
            raise ValueError(f"datapath {self.datapath!r}: expected mfs or plain")
        if not re.fullmatch(r"[a-z]{2,8}", self.prefix):
            raise ValueError(f"prefix {self.prefix!r}: 2-8 lowercase letters")
        if not 0 <= self.host_queue_ms <= 1000:
            raise ValueError(f"host queue {self.host_queue_ms:g} ms: use 0 (kernel defaults) .. 1000")
        if not 0 <= self.rto_min_ms <= 1000:
            raise ValueError(f"rto_min {self.rto_min_ms:g} ms (--rto-min-ms): use 0 (the kernel's 200 ms) .. 1000")

    def host_queue_bytes(self) -> tuple[int, int] | None:
        """(TCP small-queue budget, GSO packet size) in bytes for `host_queue_ms` at the link
        rate, or None (the kernel's defaults). At 200 Mbit/s and 1 ms: (25000, 16384)."""
        if not self.host_queue_ms:
            return None
        tsq = max(2 * GSO_MIN, int(self.rate_bps / 8 * self.host_queue_ms / 1e3))
        gso = GSO_MIN
        while gso * 2 <= min(tsq, GSO_MAX):
            gso *= 2
        return tsq, gso

    @property
    def prefill_hosts(self) -> int:
        return self.prefill_groups * self.group_size

    @classmethod
    def from_cluster(cls, cluster: ClusterShape, **kw: Any) -> TopologyConfig:
        """From a mfs_tc.workload ClusterShape (host counts and link rate)."""
        return cls(
            kv_hosts=cluster.kv_hosts,
            prefill_groups=cluster.prefill_groups,
            group_size=cluster.group_size,
            decode_hosts=cluster.decode_hosts,
            rate_bps=cluster.link_rate_bps,
            **kw,
        )


@dataclass
class Topology:
    """Create with `Topology(config).up()`; `down()` removes everything (idempotent)."""

    config: TopologyConfig
    tag: str = field(default_factory=lambda: str(os.getpid()))
    hosts: list[Host] = field(default_factory=list)
    created: bool = False

    def __post_init__(self) -> None:
        c = self.config
        base = f"{c.prefix}{self.tag}"
        self.switch_ns = f"{base}-sw"
        names = [("kv", f"kv{i}") for i in range(c.kv_hosts)]
        names += [("prefill", f"p{g}r{r}") for g in range(c.prefill_groups) for r in range(c.group_size)]
        names += [("decode", f"d{i}") for i in range(c.decode_hosts)]
        for idx, (role, name) in enumerate(names, start=1):
            self.hosts.append(Host(name, role, idx, f"{base}-{name}"))

    # ---- lookup -------------------------------------------------------------------------------
    def by_role(self, role: str) -> list[Host]:
        return [h for h in self.hosts if h.role == role]

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in this topology")

    def group(self, g: int) -> list[Host]:
        ranks = self.by_role("prefill")
        gs = self.config.group_size
        if not 0 <= g < len(ranks) // gs:
            raise KeyError(f"no prefill group {g}")
        return ranks[g * gs : (g + 1) * gs]

    @property
    def namespaces(self) -> list[str]:
        return [h.netns for h in self.hosts] + [self.switch_ns]

    def interfaces(self) -> list[tuple[str, str, bool]]:
        """(netns, ifname, trust_dscp) of every shaped interface."""
        out = [(h.netns, h.ifname, False) for h in self.hosts]
        out += [(self.switch_ns, h.port, self.config.switch_trust_dscp) for h in self.hosts]
        return out

    # ---- life cycle ---------------------------------------------------------------------------
    def up(self) -> Topology:
        if os.geteuid() != 0:
            from mfs_tc.errors import PermissionDeniedError

            raise PermissionDeniedError("the testbed creates network namespaces: run as root (sudo)")
        cleanup_leftovers(self.config.prefix)
        self.created = True
        try:
            self._build()
            self._shape()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        sw = self.switch_ns
        queue = self.config.host_queue_bytes()  # (TSQ, GSO) for every host, or the kernel's
        run_command(["ip", "netns", "add", sw])
        ip("link", "set", "lo", "up", ns=sw)
        ip("link", "add", BRIDGE, "type", "bridge", ns=sw)
        ip("link", "set", BRIDGE, "up", ns=sw)
        for h in self.hosts:
            run_command(["ip", "netns", "add", h.netns])
            ip("link", "set", "lo", "up", ns=h.netns)
            ip("link", "add", h.port, "type", "veth", "peer", "name", h.ifname, "netns", h.netns, ns=sw)
            ip("link", "set", h.port, "master", BRIDGE, ns=sw)
            ip("link", "set", h.port, "up", ns=sw)
            ip("addr", "add", f"{h.addr}/24", "dev", h.ifname, ns=h.netns)
            if queue is not None:
                set_queue_budgets(h.netns, h.ifname, queue)
                set_queue_budgets(sw, h.port, queue, tcp=False)
            ip("link", "set", h.ifname, "up", ns=h.netns)
            if self.config.rto_min_ms:
                # the subnet's route, as the kernel made it, with TCP's minimum timeout
                ip(
                    "route",
                    "replace",
                    f"{SUBNET}.0/24",
                    "dev",
                    h.ifname,
                    "proto",
                    "kernel",
                    "scope",
                    "link",
                    "src",
                    h.addr,
                    "rto_min",
                    f"{self.config.rto_min_ms:g}ms",
                    ns=h.netns,
                )
        # static neighbours: no ARP round trips in the measurements
        macs = {h.name: _mac(h) for h in self.hosts}
        for h in self.hosts:
            for o in self.hosts:
                if o is not h:
                    ip("neigh", "replace", o.addr, "lladdr", macs[o.name], "dev", h.ifname, "nud", "permanent", ns=h.netns)

    def _shape(self) -> None:
        from .shaping import shape

        for ns, dev, trust in self.interfaces():
            shape(ns, dev, self.config.rate_bps, levels=self.config.levels, trust_dscp=trust, datapath=self.config.datapath)

    def down(self) -> None:
        if not self.created:
            return
        for ns in self.namespaces:
            run_command(["ip", "netns", "del", ns], check=False)
            remove_pins(ns)
        self.created = False

    def __enter__(self) -> Topology:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


def set_queue_budgets(ns: str, dev: str, budgets: tuple[int, int], *, tcp: bool = True) -> None:
    """Apply `TopologyConfig.host_queue_bytes()` (TSQ budget, GSO size) to `dev` in `ns`: its
    GSO packets, and (tcp: a namespace whose sockets send) the namespace's TCP small-queue budget."""
    tsq, gso = budgets
    if tcp:
        run_command(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"net.ipv4.tcp_limit_output_bytes={tsq}"])
    ip("link", "set", dev, "gso_max_size", str(gso), ns=ns)


def _mac(h: Host) -> str:
    out = ip("-o", "link", "show", "dev", h.ifname, ns=h.netns)
    m = re.search(r"link/ether ([0-9a-f:]{17})", out)
    if not m:
        raise MfsError(f"no MAC address on {h.netns}/{h.ifname}")
    return m.group(1)


def remove_pins(ns: str) -> None:
    """What mfs-tc attached in namespace `ns` (pins, attach state), after the namespace is gone:
    the loader's own detach, which also prunes the pin and state roots it leaves empty."""
    from mfs_tc.loader import detach_all

    detach_all(ns)


_LEFTOVER = re.compile(r"^(?P<prefix>[a-z]+?)(?P<pid>\d+)(?:x\w+)?-")


def cleanup_leftovers(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove namespaces and pin directories `<prefix><pid>...-*` whose pid is gone."""
    removed: list[str] = []
    names = set(list_netns())
    if PIN_ROOT.is_dir():
        names |= {p.name for p in PIN_ROOT.iterdir()}
    for name in sorted(names):
        m = _LEFTOVER.match(name)
        if not m or m.group("prefix") != prefix or pid_alive(int(m.group("pid"))):
            continue
        run_command(["ip", "netns", "del", name], check=False)
        remove_pins(name)
        removed.append(name)
    return removed
