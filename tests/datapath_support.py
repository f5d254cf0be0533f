"""Datapath test and benchmark support: the classifier loaded against maps pinned in a private
directory, run on crafted packets through BPF_PROG_TEST_RUN, and per-level stats reads.

Used by tests/test_classifier*.py, tests/test_datapath*.py and tools/bench_classifier.py. Needs
root, bcc and kernel headers (what attach needs).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mfs_tc import bpfsys
from mfs_tc.layout import (
    COUNTER_FMT,
    MAX_LEVELS,
    NSTATS,
    PIN_ROOT,
    ConfigRecord,
    LevelRecord,
    dscp_to_level_table,
)

BPF_PROG_TEST_RUN = 10
SKB_SIZE = 192  # sizeof(struct __sk_buff) on 5.10+ (through hwtstamp)
SKB_PRIORITY_OFF = 32  # offsetof(struct __sk_buff, priority)
PRIO_BASE = 0x100  # skb->priority written for level L is PRIO_BASE + L in these tests


class _TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


@dataclass
class RunResult:
    retval: int
    duration_ns: int  # mean per repeat, as the kernel reports it
    data: bytes  # the packet after the program
    priority: int  # skb->priority after the program


def prog_test_run(prog_fd: int, packet: bytes, repeat: int = 1, priority: int = 0) -> RunResult:
    """Run a SCHED_CLS program once (or `repeat` times) on `packet` (an Ethernet frame)."""
    data_in = ctypes.create_string_buffer(packet, len(packet))
    data_out = ctypes.create_string_buffer(len(packet) + 256)
    ctx_in = ctypes.create_string_buffer(SKB_SIZE)
    struct.pack_into("<I", ctx_in, SKB_PRIORITY_OFF, priority)
    ctx_out = ctypes.create_string_buffer(SKB_SIZE)
    attr = _TestRunAttr()
    attr.prog_fd = prog_fd
    attr.data_size_in = len(packet)
    attr.data_size_out = len(data_out)
    attr.data_in = ctypes.addressof(data_in)
    attr.data_out = ctypes.addressof(data_out)
    attr.repeat = repeat
    attr.ctx_size_in = SKB_SIZE
    attr.ctx_size_out = SKB_SIZE
    attr.ctx_in = ctypes.addressof(ctx_in)
    attr.ctx_out = ctypes.addressof(ctx_out)
    r = bpfsys.bpf(BPF_PROG_TEST_RUN, attr)
    if r < 0:
        raise OSError(-r, f"BPF_PROG_TEST_RUN: {os.strerror(-r)}")
    (prio,) = struct.unpack_from("<I", ctx_out.raw, SKB_PRIORITY_OFF)
    return RunResult(attr.retval, attr.duration, data_out.raw[: attr.data_size_out], prio)


def read_stats(pin: Path) -> list[tuple[int, int]]:
    """(packets, bytes) per stats slot, summed over CPUs."""
    out = []
    with bpfsys.BpfMap.open(pin / "stats") as m:
        for slot in range(NSTATS):
            vals = m.lookup_percpu(slot.to_bytes(4, "little")) or []
            pk = by = 0
            for v in vals:
                p, b = struct.unpack(COUNTER_FMT, v)
                pk += p
                by += b
            out.append((pk, by))
    return out


def stats_delta(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before)]


def unique_pin() -> Path:
    return PIN_ROOT / "test" / f"p{os.getpid()}{uuid.uuid4().hex[:6]}"


@dataclass
class LoadedClassifier:
    """The classifier compiled against maps pinned in a private directory, with levels mapped to
    skb->priority PRIO_BASE + level (so test runs read the level back from ctx_out)."""

    pin: Path = field(default_factory=unique_pin)
    nlevels: int = MAX_LEVELS
    default_level: int = 0
    dscp: tuple[int, ...] = tuple(0xFF for _ in range(MAX_LEVELS))
    trust_dscp: bool = False
    bpf: object = None
    fd: int = -1

    def __enter__(self) -> "LoadedClassifier":
        from mfs_tc.loader import compile_classifier  # noqa: PLC0415

        bpfsys.ensure_bpffs()
        self.pin.mkdir(parents=True, exist_ok=True)
        try:
            self.bpf, fn = compile_classifier(self.pin)
            self.fd = fn.fd
            self.configure()
        except BaseException:
            self.close()
            raise
        return self

    def configure(self) -> None:
        with bpfsys.BpfMap.open(self.pin / "levels") as m:
            for lv in range(MAX_LEVELS):
                m.update(lv.to_bytes(4, "little"), LevelRecord(PRIO_BASE + lv, self.dscp[lv]).pack())
        cfg = ConfigRecord(
            nlevels=self.nlevels,
            default_level=self.default_level,
            scavenger_level=self.nlevels - 1,
            flags=1 if self.trust_dscp else 0,
            dscp2level=dscp_to_level_table(
                [d for d in self.dscp] if any(d != 0xFF for d in self.dscp) else list(range(MAX_LEVELS)),
                self.default_level,
            ),
        )
        with bpfsys.BpfMap.open(self.pin / "config") as m:
            m.update((0).to_bytes(4, "little"), cfg.pack())

    def map(self, name: str) -> bpfsys.BpfMap:
        return bpfsys.BpfMap.open(self.pin / name)

    def run(self, packet: bytes, repeat: int = 1) -> RunResult:
        return prog_test_run(self.fd, packet, repeat)

    def level_of(self, packet: bytes) -> int:
        r = self.run(packet)
        return r.priority - PRIO_BASE

    def stats(self) -> list[tuple[int, int]]:
        return read_stats(self.pin)

    def close(self) -> None:
        if self.bpf is not None:
            try:
                self.bpf.cleanup()
            except Exception:
                pass
            self.bpf = None
        if self.pin.exists():
            shutil.rmtree(self.pin, ignore_errors=True)
        for d in (self.pin.parent,):
            try:
                d.rmdir()
            except OSError:
                pass

    def __exit__(self, *exc: object) -> None:
        self.close()
