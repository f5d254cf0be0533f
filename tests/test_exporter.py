"""`mfs-tc exporter` on the real kernel: scraped over HTTP while UDP traffic flows through the
classifier, the per-level counters grow by exactly what was sent at each level; the textfile
holds the same families; names follow the Prometheus rules."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from attach_support import MFS, attached_veth
from nettools import VethPair
from prometheus_client.parser import text_string_to_metric_families

from mfs_tc.errors import MfsError
from mfs_tc.exporter import parse_listen
from mfs_tc.maps import PinnedMaps, set_static
from mfs_tc.netlink import socket_in

PAYLOAD = 200
WIRE = PAYLOAD + 8 + 20 + 14  # UDP + IPv4 + Ethernet: what tc egress sees as skb->len


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples(text: str, ifname: str, netns: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("interface") == ifname and s.labels.get("netns") == netns:
                key = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("interface", "netns")))
                out[(s.name, key)] = s.value
    return out


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


@pytest.fixture
def attached():
    with attached_veth(qdisc="htb", rate_bps=1_000_000_000) as n:
        yield n


def _send(net: VethPair, sport: int, count: int) -> None:
    s = socket_in(net.a, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((net.ip_a, sport))
        for _ in range(count):
            s.sendto(b"x" * PAYLOAD, (net.ip_b, 9))
    finally:
        s.close()


@pytest.mark.privileged
def test_scrape_while_traffic_flows_counts_what_was_sent_per_level(attached: VethPair, tmp_path: Path) -> None:
    net = attached
    sh_ping = ["ip", "netns", "exec", net.a, "ping", "-c", "1", "-W", "1", net.ip_b]
    subprocess.run(sh_ping, capture_output=True)  # resolve ARP now, not during the counted sends
    with PinnedMaps.open(net.dev_a, net.a) as maps:
        set_static(maps, (net.ip_a, net.ip_b, 40002, 9, "udp"), 2)
        set_static(maps, (net.ip_a, net.ip_b, 40005, 9, "udp"), 5)
    port = _free_port()
    proc = subprocess.Popen(MFS + ["exporter", "--listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            try:
                before = _samples(_scrape(port), net.dev_a, net.a)
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"exporter did not answer: {proc.stderr.read() if proc.poll() is not None else ''}")
        deltas = []
        for n2, n5 in ((30, 11), (17, 40)):  # two rounds, scraped in between
            _send(net, 40002, n2)
            _send(net, 40005, n5)
            after = _samples(_scrape(port), net.dev_a, net.a)
            lv = lambda s, lvl, what: s[(f"mfs_tc_level_{what}_total", (("level", str(lvl)),))]  # noqa: E731
            deltas.append(
                (
                    lv(after, 2, "packets") - lv(before, 2, "packets"),
                    lv(after, 5, "packets") - lv(before, 5, "packets"),
                    lv(after, 2, "bytes") - lv(before, 2, "bytes"),
                    lv(after, 5, "bytes") - lv(before, 5, "bytes"),
                )
            )
            assert deltas[-1] == (n2, n5, n2 * WIRE, n5 * WIRE), deltas
            hits = after[("mfs_tc_hit_packets_total", ())] - before[("mfs_tc_hit_packets_total", ())]
            assert hits == n2 + n5
            before = after
        assert after[("mfs_tc_flows", ())] == 2
        assert after[("mfs_tc_map_entries", (("map", "flows"),))] == 2
        assert after[("mfs_tc_map_max_entries", (("map", "flows"),))] > 2
        assert after[("mfs_tc_up", ())] == 1
        assert sum(v for (name, _k), v in after.items() if name == "mfs_tc_stage_flows") == 2
        # the textfile collector gets the same families
        r = subprocess.run(MFS + ["exporter", "--textfile", str(tmp_path), "--once"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        text = (tmp_path / "mfs_tc.prom").read_text()
        tf = _samples(text, net.dev_a, net.a)
        assert tf[("mfs_tc_level_packets_total", (("level", "5"),))] == after[("mfs_tc_level_packets_total", (("level", "5"),))]
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"mfs_tc_level_packets", "mfs_tc_level_bytes", "mfs_tc_miss_packets", "mfs_tc_flows"} <= names
        label_names = {k for f in text_string_to_metric_families(text) for smp in f.samples for k in smp.labels}
        assert label_names <= {"interface", "netns", "level", "stage", "map"}, label_names  # no request ids
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_listen_parsing_and_errors() -> None:
    assert parse_listen("127.0.0.1:9477") == ("127.0.0.1", 9477)
    assert parse_listen("[::]:9000") == ("::", 9000)
    assert parse_listen(":9000") == ("0.0.0.0", 9000)
    for bad in ("9477", "host:", "a:70000"):
        with pytest.raises(MfsError, match="ADDR:PORT"):
            parse_listen(bad)
    r = subprocess.run(MFS + ["exporter", "--textfile", "/nonexistent-dir", "--once"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not a directory" in r.stderr and "Traceback" not in r.stderr
