"""Links and paths of the simulated fabric.

Two shapes: one big switch (each host has an uplink host->switch and a downlink switch->host of
the host's link rate; a flow crosses src uplink + dst downlink), and leaf-spine (hosts in racks of
`hosts_per_rack`; each rack has one aggregate uplink and downlink to a non-blocking spine of
hosts_per_rack x link_rate / oversubscription; a flow between racks also crosses its source
rack's uplink and its destination rack's downlink). Capacities are in bytes per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..workload import ClusterShape


@dataclass(eq=False, slots=True)
class Link:
    name: str
    capacity: float  # bytes/s
    # the flows crossing it now (the python allocator's index): fluid.FluidFlow, of the source
    # or of its compiled copy (sim.accel), whichever engine runs
    flows: set[Any] = field(default_factory=set)
    bytes: float = 0.0  # carried so far

    def __repr__(self) -> str:
        return f"Link({self.name})"


class Fabric:
    """Hosts with their links; `capacity_scale` multiplies a host's link capacity (an aggregated
    prefill group: G links as one), `racks` places hosts in racks (default: consecutive blocks
    of `hosts_per_rack`)."""

    def __init__(
        self,
        hosts: list[str],
        link_rate_bps: float,
        hosts_per_rack: int = 0,
        oversubscription: float = 1.0,
        *,
        capacity_scale: dict[str, int] | None = None,
        racks: dict[str, int] | None = None,
    ) -> None:
        if link_rate_bps <= 0:
            raise ValueError("link rate must be positive")
        if len(set(hosts)) != len(hosts):
            raise ValueError("host names must be unique")
        if oversubscription < 1.0:
            raise ValueError("oversubscription must be >= 1")
        cap = link_rate_bps / 8.0
        scale = capacity_scale or {}
        self.hosts = list(hosts)
        self.up = {h: Link(f"{h}:up", cap * scale.get(h, 1)) for h in hosts}
        self.down = {h: Link(f"{h}:down", cap * scale.get(h, 1)) for h in hosts}
        self.aggregated = set(scale)
        self.rack: dict[str, int] = {}
        self.rack_up: dict[int, Link] = {}
        self.rack_down: dict[int, Link] = {}
        if hosts_per_rack > 0:
            rcap = hosts_per_rack * cap / oversubscription
            for i, h in enumerate(hosts):
                r = racks[h] if racks is not None else i // hosts_per_rack
                self.rack[h] = r
                if r not in self.rack_up:
                    self.rack_up[r] = Link(f"rack{r}:up", rcap)
                    self.rack_down[r] = Link(f"rack{r}:down", rcap)
        self._paths: dict[tuple[str, str], tuple[Link, ...]] = {}

    @classmethod
    def for_cluster(cls, cluster: ClusterShape, aggregate_groups: bool = False) -> Fabric:
        if not aggregate_groups:
            return cls(cluster.hosts(), cluster.link_rate_bps, cluster.hosts_per_rack, cluster.oversubscription)
        gmap = cls.group_map(cluster)
        hosts: list[str] = []
        racks: dict[str, int] = {}
        for i, h in enumerate(cluster.hosts()):
            v = gmap.get(h, h)
            r = i // cluster.hosts_per_rack if cluster.hosts_per_rack else 0
            if v in racks and racks[v] != r:
                raise ValueError(
                    f"cannot aggregate prefill group {v}: its ranks straddle racks; use "
                    "hosts_per_rack a multiple of group_size aligned with the groups, or run "
                    "without group aggregation"
                )
            if v not in racks:
                hosts.append(v)
                racks[v] = r
        scale = {f"p{g}": cluster.group_size for g in range(cluster.prefill_groups)}
        return cls(
            hosts, cluster.link_rate_bps, cluster.hosts_per_rack, cluster.oversubscription, capacity_scale=scale, racks=racks
        )

    @staticmethod
    def group_map(cluster: ClusterShape) -> dict[str, str]:
        """Prefill rank host -> its group's aggregated host name."""
        return {r: f"p{g}" for g in range(cluster.prefill_groups) for r in cluster.ranks(g)}

    def links(self) -> list[Link]:
        return [*self.up.values(), *self.down.values(), *self.rack_up.values(), *self.rack_down.values()]

    def path(self, src: str, dst: str) -> tuple[Link, ...]:
        key = (src, dst)
        p = self._paths.get(key)
        if p is None:
            if src not in self.up or dst not in self.down:
                raise ValueError(f"unknown host in path {src} -> {dst}")
            if src == dst and src not in self.aggregated:
                raise ValueError(f"a flow needs two distinct hosts, got {src} -> {dst}")
            rs, rd = self.rack.get(src), self.rack.get(dst)
            if rs is not None and rd is not None and rs != rd:
                p = (self.up[src], self.rack_up[rs], self.rack_down[rd], self.down[dst])
            else:
                p = (self.up[src], self.down[dst])
            self._paths[key] = p
        return p
