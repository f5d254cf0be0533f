"""Network-namespace fixtures for tests: two hosts joined by a veth pair.

Names carry the pid so parallel or crashed runs never collide; everything is removed on exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from dataclasses import dataclass, field


def drain(conn: socket.socket) -> None:
    """Read a connection until its peer closes it, then close it (a sink for a sender's data)."""
    with conn:
        while conn.recv(1 << 16):
            pass


def sh(*args: str, ns: str | None = None, check: bool = True, timeout: float = 30) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


@dataclass
class VethPair:
    """Namespaces `a` and `b`, veth `dev_a` in a, `dev_b` in b; IPv4 10.77.0.1/2, IPv6 fd77::1/2."""

    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}{uuid.uuid4().hex[:4]}")
    a: str = ""
    b: str = ""
    dev_a: str = "veth0"
    dev_b: str = "veth1"
    ip_a: str = "10.77.0.1"
    ip_b: str = "10.77.0.2"
    ip6_a: str = "fd77::1"
    ip6_b: str = "fd77::2"

    def __post_init__(self) -> None:
        self.a = self.a or f"mfst-a{self.tag}"
        self.b = self.b or f"mfst-b{self.tag}"

    def up(self) -> VethPair:
        """Make both namespaces and the veth; a step that fails removes what the others made
        (a fixture that fails during setup leaves no namespace behind)."""
        try:
            return self._up()
        except BaseException:
            self.down()
            raise

    def _up(self) -> VethPair:
        sh("ip", "netns", "add", self.a)
        sh("ip", "netns", "add", self.b)
        self.link()
        for ns in (self.a, self.b):
            sh("ip", "link", "set", "lo", "up", ns=ns)
        return self

    def link(self) -> None:
        """Make the veth between the namespaces, addressed and up (again, after a test deleted
        it: a new device under the old names)."""
        sh("ip", "link", "add", self.dev_a, "type", "veth", "peer", "name", self.dev_b, ns=self.a)
        sh("ip", "link", "set", self.dev_b, "netns", self.b, ns=self.a)
        for ns, dev, ip4, ip6 in ((self.a, self.dev_a, self.ip_a, self.ip6_a), (self.b, self.dev_b, self.ip_b, self.ip6_b)):
            sh("ip", "addr", "add", f"{ip4}/24", "dev", dev, ns=ns)
            sh("ip", "-6", "addr", "add", f"{ip6}/64", "dev", dev, "nodad", ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)

    def down(self) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def __enter__(self) -> VethPair:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()
