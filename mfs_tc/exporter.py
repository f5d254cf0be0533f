"""Prometheus metrics of every attached interface, read from the pinned maps at each scrape.

Served with the official prometheus-client library (`mfs-tc exporter --listen ADDR:PORT`) or
written for node_exporter's textfile collector (`--textfile DIR`: DIR/mfs_tc.prom, replaced
atomically). Names follow the Prometheus conventions: base units (bytes), `_total` on counters,
labels `interface`, `netns` ("host" for the initial namespace), `level`, `stage`, `map`; no
request ids (unbounded cardinality).

  mfs_tc_level_packets_total / mfs_tc_level_bytes_total   per interface and level
  mfs_tc_<event>_packets_total                            miss, malformed, non_ip, fragment,
                                                          no_l4, hit, scavenged, dscp_set
  mfs_tc_flows                                            live flow entries
  mfs_tc_stage_flows                                      live flow entries per stage
  mfs_tc_rule_matched_packets_total / _bytes_total       per rule (labels rule = its id, level)
  mfs_tc_map_entries / mfs_tc_map_max_entries             map pressure (flows, requests, rules)
  mfs_tc_up                                               1 when the interface's maps were read
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import start_http_server, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .attachment import attached
from .errors import MfsError
from .layout import RULES_MAX, STAT_NAMES, netns_label
from .maps import PinnedMaps
from .pinpath import pin_root
from .rules import RuleTable

TEXTFILE_NAME = "mfs_tc.prom"


@dataclass
class Target:
    ifname: str
    netns: str | None


def pinned_targets(root: Path | None = None) -> list[Target]:
    """Every (netns, interface) with a pinned flows map under `root`, plus those with attach
    state (whose pins may be unreadable or gone: reported as mfs_tc_up 0)."""

    found = {(ns, ifn) for ns, ifn in attached()}
    try:
        root = root or pin_root()
        for ns_dir in root.iterdir():
            for if_dir in ns_dir.iterdir():
                if (if_dir / "flows").exists():
                    found.add((None if ns_dir.name == "host" else ns_dir.name, if_dir.name))
    except (OSError, MfsError):
        pass
    return [Target(ifn, ns) for ns, ifn in sorted(found, key=lambda t: (t[0] or "", t[1]))]


class MfsCollector(Collector):
    """Reads the maps of `targets()` at every collect()."""

    def __init__(self, targets: Callable[[], list[Target]] = pinned_targets, root: Path | None = None) -> None:
        self.targets = targets
        self.root = root

    def collect(self) -> Iterator[Metric]:
        labels = ["interface", "netns"]
        lvl_p = CounterMetricFamily("mfs_tc_level_packets", "Packets the classifier gave each level.", labels=labels + ["level"])
        lvl_b = CounterMetricFamily(
            "mfs_tc_level_bytes", "Bytes the classifier gave each level.", labels=labels + ["level"], unit="bytes"
        )
        events = {
            name: CounterMetricFamily(f"mfs_tc_{name}_packets", f"Packets counted as {name} by the classifier.", labels=labels)
            for name in STAT_NAMES.values()
        }
        flows = GaugeMetricFamily("mfs_tc_flows", "Live flow entries.", labels=labels)
        stages = GaugeMetricFamily("mfs_tc_stage_flows", "Live flow entries per stage.", labels=labels + ["stage"])
        used = GaugeMetricFamily("mfs_tc_map_entries", "Entries in a pinned map.", labels=labels + ["map"])
        cap = GaugeMetricFamily("mfs_tc_map_max_entries", "Capacity of a pinned map.", labels=labels + ["map"])
        rule_p = CounterMetricFamily(
            "mfs_tc_rule_matched_packets", "Packets a rule gave its level.", labels=labels + ["rule", "level"]
        )
        rule_b = CounterMetricFamily(
            "mfs_tc_rule_matched_bytes", "Bytes a rule gave its level.", labels=labels + ["rule", "level"], unit="bytes"
        )
        up = GaugeMetricFamily("mfs_tc_up", "1 when the interface's pinned maps could be read.", labels=labels)
        for t in self.targets():
            lab = [t.ifname, netns_label(t.netns)]
            try:
                with PinnedMaps.open(t.ifname, t.netns, self.root) as maps:  # None: pinpath.pin_root()
                    stats = maps.stats()
                    views = maps.flow_views()
                    sizes = {
                        "flows": (len(views), maps.flows.info.max_entries),
                        "requests": (len(maps.requests), maps.requests.info.max_entries),
                    }
                    nlevels = maps.config.nlevels
                    rules = RuleTable(maps).rows()
                    sizes["rules"] = (len(rules), RULES_MAX)
            except (MfsError, OSError, ValueError):
                up.add_metric(lab, 0)
                continue
            up.add_metric(lab, 1)
            for rec in stats["levels"][:nlevels]:
                lvl_p.add_metric(lab + [str(rec["level"])], rec["packets"])
                lvl_b.add_metric(lab + [str(rec["level"])], rec["bytes"])
            for name, fam in events.items():
                fam.add_metric(lab, stats["events"].get(name, {}).get("packets", 0))
            flows.add_metric(lab, len(views))
            for stage, n in sorted(Counter(v.entry.stage_name for v in views).items()):
                stages.add_metric(lab + [stage], n)
            for r in rules:
                rule_p.add_metric(lab + [str(r.record.id), str(r.record.level)], r.packets)
                rule_b.add_metric(lab + [str(r.record.id), str(r.record.level)], r.bytes)
            for m, (n, mx) in sizes.items():
                used.add_metric(lab + [m], n)
                cap.add_metric(lab + [m], mx)
        yield from (lvl_p, lvl_b, *events.values(), flows, stages, rule_p, rule_b, used, cap, up)


def registry(collector: Collector | None = None) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector or MfsCollector())
    return reg


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:9477', '[::]:9477', ':9477' (all addresses) -> (addr, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise MfsError(f"--listen {text!r}: use ADDR:PORT, e.g. 127.0.0.1:9477, [::]:9477 or :9477")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def write_textfile(directory: Path, reg: CollectorRegistry) -> Path:
    """DIR/mfs_tc.prom, written to a temporary file and renamed (node_exporter never reads half)."""
    if not directory.is_dir():
        raise MfsError(f"--textfile {directory}: not a directory (node_exporter's --collector.textfile.directory)")
    path = directory / TEXTFILE_NAME
    write_to_textfile(str(path), reg)
    return path


def serve(
    listen: str | None,
    textfile: Path | None,
    interval_s: float,
    once: bool,
    reg: CollectorRegistry | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Serve HTTP on `listen` and/or rewrite the textfile every `interval_s` until `stop()`."""
    reg = reg or registry()
    if listen:
        addr, port = parse_listen(listen)
        try:
            start_http_server(port, addr, reg)
        except OSError as exc:
            raise MfsError(f"--listen {listen}: {exc.strerror or exc}") from None
    if textfile is not None:
        write_textfile(textfile, reg)
    if once and not listen:
        return
    while not stop():
        time.sleep(interval_s)
        if textfile is not None:
            write_textfile(textfile, reg)


def scrape_text(reg: CollectorRegistry | None = None) -> str:
    """The exposition text of one collection (what a scrape returns)."""
    from prometheus_client import generate_latest

    return generate_latest(reg or registry()).decode()
