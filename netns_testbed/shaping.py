"""Bottleneck shaping of one testbed interface.

datapath "mfs": mfs-tc's loader attaches the classifier with its HTB backend (root HTB at the
link rate, one strict-priority leaf per level), so the classifier's level decides the order in
which the shaped link serves packets. On switch ports the classifier trusts the DSCP the
sending host wrote.
datapath "plain": a single HTB class at the link rate, no classifier (FIFO sharing; used to
check the topology itself and as a no-mfs-tc reference).
"""

from __future__ import annotations

from mfs_tc.netlink import run_command


def _rate(rate_bps: float) -> str:
    return f"{int(rate_bps)}bit"


def shape(ns: str, dev: str, rate_bps: float, *, levels: int = 8, trust_dscp: bool = False, datapath: str = "mfs") -> None:
    if datapath == "plain":
        shape_plain(ns, dev, rate_bps)
        return
    from mfs_tc.loader import AttachOptions, attach  # noqa: PLC0415 - the plain datapath needs no loader

    # default level 0: what no flow entry names is the reverse direction's ACKs and handshakes;
    # they must not starve behind bulk data of the other direction
    attach(
        AttachOptions(ifname=dev, netns=ns, levels=levels, qdisc="htb", rate_bps=int(rate_bps), dscp=None, trust_dscp=trust_dscp)
    )


def shape_plain(ns: str, dev: str, rate_bps: float) -> None:
    run_command(["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "1"], ns)
    run_command(
        [
            "tc",
            "class",
            "add",
            "dev",
            dev,
            "parent",
            "1:",
            "classid",
            "1:1",
            "htb",
            "rate",
            _rate(rate_bps),
            "ceil",
            _rate(rate_bps),
        ],
        ns,
    )
