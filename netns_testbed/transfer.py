"""Real TCP transfers between testbed hosts.

Each host runs one `Sink` (listening on port SINK_PORT inside its namespace): it drains every
connection to EOF with recv_into (no copies kept) and answers with the byte count it received,
so the sender knows the bytes were delivered, not just queued. `open_flow` connects from the
sender's namespace (the socket stays there), so the caller can register the flow's 5-tuple with
the controller before the first data byte; `FlowConn.send_all` then moves the bytes with
sendall of a large shared zero buffer (the kernel, not Python, moves them).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from mfs_tc.errors import MfsError
from mfs_tc.layout import FlowKey

from .netns import call_in_netns, enter_netns

SINK_PORT = 5601
CHUNK = 1 << 20
_ZEROS = memoryview(bytes(4 << 20))
_ACK = struct.Struct("!Q")


class TransferError(MfsError):
    """A testbed transfer failed (connection refused, reset, short delivery)."""


@dataclass
class Sink:
    netns: str
    addr: str
    port: int = SINK_PORT
    received_bytes: int = 0
    connections: int = 0
    _sock: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def start(self) -> Sink:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.addr, self.port))
            s.listen(512)
            return s

        self._sock = call_in_netns(self.netns, make)
        t = threading.Thread(target=self._accept, name=f"sink-{self.netns}", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        buf = bytearray(CHUNK)
        n = 0
        try:
            while True:
                k = conn.recv_into(buf)
                if k == 0:
                    break
                n += k
            conn.sendall(_ACK.pack(n))
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self.received_bytes += n
                self.connections += 1

    def close(self) -> None:
        self._closed = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()


@dataclass
class FlowConn:
    sock: socket.socket
    key: FlowKey
    nbytes: int
    start_ns: int = 0
    end_ns: int = 0
    delivered: int = 0

    def send_all(self) -> int:
        """Send `nbytes`, half-close, wait for the sink's count. Returns bytes delivered."""
        self.start_ns = time.monotonic_ns()
        left = self.nbytes
        try:
            while left > 0:
                k = min(left, len(_ZEROS))
                self.sock.sendall(_ZEROS[:k])
                left -= k
            self.sock.shutdown(socket.SHUT_WR)
            raw = b""
            while len(raw) < _ACK.size:
                part = self.sock.recv(_ACK.size - len(raw))
                if not part:
                    break
                raw += part
        except OSError as exc:
            raise TransferError(f"transfer {self.key} failed: {exc}") from exc
        finally:
            self.end_ns = time.monotonic_ns()
            self.sock.close()
        if len(raw) != _ACK.size:
            raise TransferError(f"transfer {self.key}: sink closed without a byte count")
        (self.delivered,) = _ACK.unpack(raw)
        return self.delivered

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def open_flow(src_netns: str, dst_addr: str, nbytes: int, port: int = SINK_PORT) -> FlowConn:
    """Connect from inside `src_netns` to the sink at `dst_addr` (call from any thread)."""
    if nbytes < 0:
        raise ValueError("bytes must not be negative")

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(120)
        s.connect((dst_addr, port))
        return s

    try:
        sock = call_in_netns(src_netns, make)
    except OSError as exc:
        raise TransferError(f"connect {src_netns} -> {dst_addr}:{port}: {exc}") from exc
    return FlowConn(sock, FlowKey.from_socket(sock), nbytes)


def open_flow_here(dst_addr: str, nbytes: int, port: int = SINK_PORT) -> FlowConn:
    """Like open_flow, for a thread already inside the sender's namespace."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(120)
    try:
        s.connect((dst_addr, port))
    except OSError as exc:
        s.close()
        raise TransferError(f"connect -> {dst_addr}:{port}: {exc}") from exc
    return FlowConn(s, FlowKey.from_socket(s), nbytes)


__all__ = ["Sink", "FlowConn", "open_flow", "open_flow_here", "enter_netns", "TransferError"]
