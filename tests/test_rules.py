"""Rules by prefix, port range and protocol, on a real egress path (veth between two network
namespaces): what the peer captures carries the DSCP of the first matching rule's level, and
the default level's DSCP when no rule matches; exact entries win over rules; per-rule counters
count what matched; a full table and bad input are one-line errors."""

from __future__ import annotations

import json
import socket

import pytest
from attach_support import assert_one_line_error, attached_veth, mfs
from datapath_support import Capture, tcp_frames
from datapath_support import dscp_of as _dscp
from datapath_support import udp_dscp as _udp_dscp
from nettools import VethPair
from scapy.layers.inet import TCP, UDP
from scapy.layers.l2 import Ether

from mfs_tc import layout
from mfs_tc.layout import RULES_MAX
from mfs_tc.maps import PinnedMaps
from mfs_tc.netlink import socket_in
from mfs_tc.rules import RuleSpec, RuleTable

pytestmark = pytest.mark.privileged

DEFAULT = 6
DSCP = layout.DEFAULT_DSCP


def ok(*args: str) -> str:
    r = mfs(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def net():
    with attached_veth(checksums_in_software=True, qdisc="none", default_level=DEFAULT) as n:
        yield n


@pytest.fixture
def rules(net):
    """A clean rule table (and no exact entries) for each test."""
    with PinnedMaps.open(net.dev_a, net.a) as maps:
        RuleTable(maps).clear()
        for k in list(maps.flows.keys()):
            maps.flows.delete(k)
    return ["-n", net.a]


def udp_dscp(net: VethPair, dport: int, v6: bool = False, sport: int = 0, n: int = 3) -> list[int]:
    got = _udp_dscp(net, dport, v6, sport, n)
    assert len(got) == n
    return got


def tcp_dscp(net: VethPair, dport: int, sport: int) -> tuple[list[int], list[int]]:
    """A real TCP connection a:sport -> b:dport with 20 kB of data: (DSCP of the SYN, of data segments)."""
    frames = tcp_frames(net, sport, dport)
    syn = [_dscp(f) for f in frames if Ether(f)[TCP].flags.S]
    data = [_dscp(f) for f in frames if len(Ether(f)[TCP].payload) > 0]
    assert syn and data
    return syn, data


def rule_list(ns_args: list[str], dev: str) -> list[dict]:
    return json.loads(ok("rule", "list", dev, *ns_args, "--json"))


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_prefix_and_port_range_udp(net: VethPair, rules: list[str], v6: bool) -> None:
    prefix = "fd77::/64" if v6 else "10.77.0.0/24"
    ok("rule", "add", net.dev_a, *rules, "--dst", prefix, "--dport", "7000-7010", "--proto", "udp", "--level", "2")
    assert udp_dscp(net, 7005, v6) == [DSCP[2]] * 3
    assert udp_dscp(net, 7000, v6) == [DSCP[2]] * 3  # range ends are inclusive
    assert udp_dscp(net, 7011, v6) == [DSCP[DEFAULT]] * 3  # outside the range: the default
    # the other family does not match a prefix of this one
    assert udp_dscp(net, 7005, not v6) == [DSCP[DEFAULT]] * 3
    (row,) = rule_list(rules, net.dev_a)
    assert (row["dst"], row["dport"], row["proto"], row["level"], row["packets"]) == (prefix, "7000-7010", "udp", 2, 6)
    st = json.loads(ok("status", net.dev_a, *rules, "--json"))
    assert st["rules"][0]["packets"] == 6 and st["counters"]["rule"]["packets"] >= 6


def test_src_prefix_that_does_not_match(net: VethPair, rules: list[str]) -> None:
    ok("rule", "add", net.dev_a, *rules, "--src", "10.99.0.0/16", "--level", "1")
    assert udp_dscp(net, 7020) == [DSCP[DEFAULT]] * 3
    ok("rule", "add", net.dev_a, *rules, "--src", "10.77.0.1", "--level", "1")
    assert udp_dscp(net, 7020) == [DSCP[1]] * 3


def test_tcp_sport_rule_and_proto(net: VethPair, rules: list[str]) -> None:
    """A TCP rule marks the whole connection (its SYN too); UDP from the same port is not TCP."""
    ok("rule", "add", net.dev_a, *rules, "--proto", "tcp", "--sport", "43000-43009", "--level", "3")
    syn, data = tcp_dscp(net, 7100, 43001)
    assert set(syn) == {DSCP[3]} and set(data) == {DSCP[3]}
    assert udp_dscp(net, 7101, sport=43002) == [DSCP[DEFAULT]] * 3


def test_precedence_first_match_in_priority_order(net: VethPair, rules: list[str]) -> None:
    ok("rule", "add", net.dev_a, *rules, "--dst", "10.77.0.0/24", "--level", "4")
    # the narrower rule appended after the broad one is never reached
    out = ok("rule", "add", net.dev_a, *rules, "--dst", "10.77.0.2/32", "--dport", "7200", "--level", "1")
    assert "priority 2" in out
    assert udp_dscp(net, 7200) == [DSCP[4]] * 3
    # put first, it wins for what it matches; the broad one still takes the rest
    ok("rule", "add", net.dev_a, *rules, "--dst", "10.77.0.2/32", "--dport", "7200", "--level", "0", "--priority", "1")
    assert udp_dscp(net, 7200) == [DSCP[0]] * 3
    assert udp_dscp(net, 7201) == [DSCP[4]] * 3
    rows = rule_list(rules, net.dev_a)
    assert [(r["priority"], r["level"]) for r in rows] == [(1, 0), (2, 4), (3, 1)]
    assert [r["packets"] for r in rows] == [3, 6, 0]  # the broad one's counter kept its slot
    ok("rule", "del", net.dev_a, str(rows[0]["id"]), *rules)
    assert udp_dscp(net, 7200) == [DSCP[4]] * 3
    assert [r["packets"] for r in rule_list(rules, net.dev_a)] == [9, 0]
    assert "removed 2" in ok("rule", "del", net.dev_a, "--all", *rules)
    assert udp_dscp(net, 7200) == [DSCP[DEFAULT]] * 3


def test_exact_entries_win_over_rules(net: VethPair, rules: list[str]) -> None:
    ok("rule", "add", net.dev_a, *rules, "--dst", "10.77.0.0/24", "--level", "4")
    ok(
        "set",
        net.dev_a,
        *rules,
        "--src",
        net.ip_a,
        "--dst",
        net.ip_b,
        "--sport",
        "43100",
        "--dport",
        "7300",
        "--proto",
        "udp",
        "--level",
        "1",
    )
    assert udp_dscp(net, 7300, sport=43100) == [DSCP[1]] * 3  # the 5-tuple entry
    assert udp_dscp(net, 7300, sport=43101) == [DSCP[4]] * 3  # same destination, no entry: the rule
    (row,) = rule_list(rules, net.dev_a)
    assert row["packets"] == 3


def test_exact_socket_entry_wins_over_rules(net: VethPair, rules: list[str]) -> None:
    """An entry in socket storage (Controller on a connected socket) wins over a rule too."""
    from mfs_tc.controller import Controller

    ok("rule", "add", net.dev_a, *rules, "--dst", "10.77.0.0/24", "--level", "4")
    with (
        Controller.open(net.dev_a, netns=net.a, policy="stage") as ctl,
        socket_in(net.a, socket.AF_INET, socket.SOCK_DGRAM) as s,
        socket_in(net.b, socket.AF_INET, socket.SOCK_DGRAM) as sink,
        Capture(net.b, net.dev_b) as cap,
    ):
        sink.bind((net.ip_b, 7400))  # no ICMP port unreachable back to the connected socket
        s.bind((net.ip_a, 0))
        s.connect((net.ip_b, 7400))
        req = ctl.request("rq-1", slo_s=5.0)
        req.stage("collective", bytes=1 << 20).add_flow(s, bytes=1 << 20)
        for _ in range(3):
            s.send(b"c" * 100)
        got = cap.frames(3, match=lambda f: UDP in Ether(f) and Ether(f)[UDP].dport == 7400)
        req.done()
    assert [_dscp(f) for f in got] == [DSCP[0]] * 3  # the stage policy's collective level


def test_stage_rule_gets_the_stage_level_and_is_counted_per_stage(net: VethPair, rules: list[str]) -> None:
    out = ok("rule", "add", net.dev_a, *rules, "--dport", "5000", "--proto", "udp", "--stage", "kv_fetch")
    assert "level 1" in out  # the `stage` policy's kv_fetch level with 8 levels
    ok("rule", "add", net.dev_a, *rules, "--dport", "5001", "--stage", "p2d")
    assert udp_dscp(net, 5000) == [DSCP[1]] * 3
    assert udp_dscp(net, 5001, n=2) == [DSCP[2]] * 2
    st = json.loads(ok("status", net.dev_a, *rules, "--json"))
    assert st["rule_stages"]["kv_fetch"]["packets"] == 3 and st["rule_stages"]["p2d"]["packets"] == 2
    text = ok("status", net.dev_a, *rules)
    assert "stage kv_fetch: 3 packets" in text and "first match wins" in text


def test_full_table_is_a_clear_error(net: VethPair, rules: list[str]) -> None:
    with PinnedMaps.open(net.dev_a, net.a) as maps:
        t = RuleTable(maps)
        for i in range(RULES_MAX - 1):
            t.add(RuleSpec(dport=str(20000 + i), level=3))
    ok("rule", "add", net.dev_a, *rules, "--dport", "7500", "--level", "1")  # the 64th fits
    assert_one_line_error(mfs("rule", "add", net.dev_a, *rules, "--dport", "7501", "--level", "1"), "rule table is full (64")
    rows = rule_list(rules, net.dev_a)
    assert len(rows) == RULES_MAX and rows[-1]["dport"] == "7500"
    assert udp_dscp(net, 7500) == [DSCP[1]] * 3  # the last slot is reached by the scan


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dst", "10.1.2.300/24", "--level", "1"], "not a CIDR prefix"),
        (["--src", "fd00::/129", "--level", "1"], "not a CIDR prefix"),
        (["--dport", "70000", "--level", "1"], "ports must be 0..65535"),
        (["--sport", "9-3", "--level", "1"], "A <= B"),
        (["--dport", "http", "--level", "1"], "use a port N or a range A-B"),
        (["--dport", "80", "--level", "8"], "levels 0..7"),
        (["--dport", "80"], "exactly one of --level N or --stage"),
        (["--dport", "80", "--level", "1", "--stage", "p2d"], "exactly one of --level N or --stage"),
        (["--dport", "80", "--stage", "decode"], "use one of kv_fetch, collective, p2d"),
        (["--proto", "icmp", "--level", "1"], "use tcp or udp"),
        (["--src", "10.0.0.0/8", "--dst", "fd00::/8", "--level", "1"], "different address families"),
        (["--level", "1", "--priority", "5"], "--priority 5: use 1..1"),
    ],
)
def test_bad_input_is_a_one_line_error(net: VethPair, rules: list[str], args: list[str], needle: str) -> None:
    assert_one_line_error(mfs("rule", "add", net.dev_a, *rules, *args), needle)
    assert rule_list(rules, net.dev_a) == []


def test_del_unknown_id_is_a_one_line_error(net: VethPair, rules: list[str]) -> None:
    assert_one_line_error(mfs("rule", "del", net.dev_a, "42", *rules), "no rule with id 42")
    assert_one_line_error(mfs("rule", "del", net.dev_a, *rules), "needs a rule id or --all")


def test_rule_counters_are_exported(net: VethPair, rules: list[str]) -> None:
    from prometheus_client import generate_latest

    from mfs_tc.exporter import registry

    out = ok("rule", "add", net.dev_a, *rules, "--dport", "7600", "--proto", "udp", "--level", "3")
    rid = out.split()[1]
    assert udp_dscp(net, 7600, n=4) == [DSCP[3]] * 4
    text = generate_latest(registry()).decode()
    lab = f'interface="{net.dev_a}",level="3",netns="{net.a}",rule="{rid}"'
    assert f"mfs_tc_rule_matched_packets_total{{{lab}}} 4.0" in text, text
    assert f'mfs_tc_map_entries{{interface="{net.dev_a}",map="rules",netns="{net.a}"}} 1.0' in text


def test_rules_on_a_trust_dscp_port_are_an_error() -> None:
    with attached_veth(qdisc="none", trust_dscp=True) as n:
        assert_one_line_error(
            mfs("rule", "add", n.dev_a, "-n", n.a, "--dport", "80", "--level", "1"), "attached with --trust-dscp"
        )
