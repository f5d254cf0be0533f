"""The bpf(2) layer against the real kernel: maps, pins, info, batches, per-CPU values, errors."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap

import pytest
from controller_helpers import SCRATCH, remove_root, scratch_root

from mfs_tc import bpfsys
from mfs_tc.bpfsys import BpfMap
from mfs_tc.errors import MapFullError, NotAttachedError, PermissionDeniedError


def test_possible_cpus_parses_ranges(tmp_path):
    for text, n in (("0-1\n", 2), ("0\n", 1), ("0-3,8-11\n", 12), ("0,2\n", 3)):
        p = tmp_path / "possible"
        p.write_text(text)
        assert bpfsys.possible_cpus(str(p)) == n
    assert bpfsys.possible_cpus() >= 1


def test_error_mapping_names_the_fix():
    import errno

    e = bpfsys.error_for(bpfsys.BPF_OBJ_GET, errno.EACCES, "/x")
    assert isinstance(e, PermissionDeniedError) and "root" in str(e) and "--group" in str(e)
    # an fd opened with less access says what it may do (the access group's share)
    e = bpfsys.error_for(bpfsys.BPF_MAP_GET_NEXT_KEY, errno.EPERM, "requests", bpfsys.BPF_F_WRONLY)
    assert "write-only" in str(e) and "cannot read or list" in str(e)
    e = bpfsys.error_for(bpfsys.BPF_MAP_UPDATE_ELEM, errno.EPERM, "config", bpfsys.BPF_F_RDONLY)
    assert "read-only" in str(e) and "needs root" in str(e)
    assert isinstance(bpfsys.error_for(bpfsys.BPF_MAP_UPDATE_ELEM, errno.E2BIG, "flows"), MapFullError)
    assert isinstance(bpfsys.error_for(bpfsys.BPF_OBJ_GET, errno.ENOENT, "/x"), NotAttachedError)
    other = bpfsys.error_for(bpfsys.BPF_MAP_LOOKUP_ELEM, errno.EFAULT, "flows")
    assert isinstance(other, bpfsys.BpfSyscallError) and other.errno == errno.EFAULT


@pytest.fixture
def root():
    bpfsys.ensure_bpffs()
    r = scratch_root()
    r.mkdir(parents=True)
    yield r
    remove_root(r)


@pytest.mark.privileged
def test_hash_map_elements_and_info():
    with BpfMap.create(bpfsys.MAP_TYPE_LRU_HASH, 40, 136, 128, "t_flows") as m:
        assert (m.info.type, m.info.key_size, m.info.value_size, m.info.max_entries) == (9, 40, 136, 128)
        assert m.info.name == "t_flows" and m.info.type_name == "lru_hash"
        k1, k2 = b"a" * 40, b"b" * 40
        assert m.lookup(k1) is None
        m.update(k1, b"1" * 136)
        m.update(k2, b"2" * 136)
        assert m.lookup(k1) == b"1" * 136
        assert sorted(m.keys()) == [k1, k2]
        assert dict(m.items()) == {k1: b"1" * 136, k2: b"2" * 136}
        with pytest.raises(bpfsys.BpfSyscallError):
            m.update(k1, b"3" * 136, bpfsys.BPF_NOEXIST)  # EEXIST
        assert m.delete(k1) is True
        assert m.delete(k1) is False
        assert list(m.keys()) == [k2]
        with pytest.raises(ValueError, match="key of 3 bytes"):
            m.lookup(b"abc")
        with pytest.raises(ValueError, match="value of 2 bytes"):
            m.update(k1, b"xx")


@pytest.mark.privileged
def test_batches_write_read_and_delete_many():
    with BpfMap.create(bpfsys.MAP_TYPE_HASH, 8, 24, 5000, "t_batch") as m:
        keys = [struct.pack("<Q", i + 1) for i in range(3000)]
        vals = [struct.pack("<iIqQ", i, 0, i * 10, 7) for i in range(3000)]
        m.update_batch(keys, vals)
        got = dict(m.items())  # batched lookup, several chunks
        assert len(got) == 3000 and got[keys[1234]] == vals[1234]
        # delete with some keys missing: the rest still go
        assert m.delete_batch(keys[:1000] + [struct.pack("<Q", 999999)] + keys[1000:1500]) == 1500
        assert len(m) == 1500
        with pytest.raises(ValueError):
            m.update_batch(keys[:2], vals[:1])


@pytest.mark.privileged
def test_full_hash_map_raises_map_full():
    with BpfMap.create(bpfsys.MAP_TYPE_HASH, 8, 24, 4, "t_full") as m:
        for i in range(4):
            m.update(struct.pack("<Q", i), b"\0" * 24)
        with pytest.raises(MapFullError, match="full"):
            m.update(struct.pack("<Q", 99), b"\0" * 24)
        with pytest.raises(MapFullError):
            m.update_batch([struct.pack("<Q", 100 + i) for i in range(3)], [b"\0" * 24] * 3)


@pytest.mark.privileged
def test_percpu_array_values_per_cpu():
    with BpfMap.create(bpfsys.MAP_TYPE_PERCPU_ARRAY, 4, 12, 4, "t_pcpu") as m:
        n = bpfsys.possible_cpus()
        assert m.ncpus == n and m.slot_size == 16 and m.value_size == 16 * n
        key = (2).to_bytes(4, "little")
        assert m.lookup_percpu(key) == [b"\0" * 12] * n
        vals = [bytes([c + 1]) * 12 for c in range(n)]
        m.update_percpu(key, vals)
        assert m.lookup_percpu(key) == vals
        assert len(list(m.keys())) == 4
        with pytest.raises(ValueError, match="possible CPUs"):
            m.update_percpu(key, vals + vals)


@pytest.mark.privileged
def test_pin_and_reopen(root):
    path = root / "pinned"
    with BpfMap.create(bpfsys.MAP_TYPE_ARRAY, 4, 8, 8, "t_pin") as m:
        m.pin(path)
        m.update((3).to_bytes(4, "little"), b"abcdefgh")
    with BpfMap.open(path) as again:  # the pin keeps the map alive after the fd closed
        assert again.name == "pinned" and again.info.max_entries == 8
        assert again.lookup((3).to_bytes(4, "little")) == b"abcdefgh"
    with pytest.raises(NotAttachedError, match="nothing is pinned"):
        BpfMap.open(root / "missing")


@pytest.mark.privileged
def test_permission_denied_names_the_fix(root):
    path = root / "private"
    with BpfMap.create(bpfsys.MAP_TYPE_ARRAY, 4, 8, 1, "t_priv") as m:
        m.pin(path)
    os.chmod(path, 0o600)
    code = textwrap.dedent(
        f"""
        import os, sys
        from mfs_tc.bpfsys import BpfMap
        from mfs_tc.errors import PermissionDeniedError
        os.setgroups([]); os.setgid(65534); os.setuid(65534)  # after the imports: the checkout may be unreadable to nobody
        try:
            BpfMap.open({str(path)!r})
        except PermissionDeniedError as e:
            print("DENIED", e)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "DENIED" in r.stdout, r.stderr
    assert "root" in r.stdout and "CAP_BPF" in r.stdout


@pytest.mark.privileged
def test_ensure_bpffs_is_idempotent():
    bpfsys.ensure_bpffs()
    bpfsys.ensure_bpffs()
    assert bpfsys.is_bpffs("/sys/fs/bpf")
    with open("/proc/self/mounts") as f:
        assert sum(1 for line in f if line.split()[1] == "/sys/fs/bpf") == 1
    assert bpfsys.Path("/sys/fs/bpf") in SCRATCH.parents


@pytest.mark.privileged
def test_threads_share_one_map_object():
    import threading

    with BpfMap.create(bpfsys.MAP_TYPE_HASH, 8, 24, 20000, "t_threads") as m:
        bad: list[str] = []

        def work(t: int) -> None:
            for i in range(2000):
                k = struct.pack("<Q", t * 100000 + i)
                v = struct.pack("<QQQ", t, i, t ^ i)
                m.update(k, v)
                if m.lookup(k) != v:
                    bad.append(f"{t}/{i}")
                if i % 3 == 0 and not m.delete(k):
                    bad.append(f"del {t}/{i}")

        ts = [threading.Thread(target=work, args=(t,)) for t in range(6)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        assert not bad
        assert len(m) == 6 * (2000 - 667)
