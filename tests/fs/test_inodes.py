"""The node's packed lstat (`NodeStat`): every field reads back as lstat gave
it, changed copies leave the original alone, and it stays small (a node lives
as long as the kernel holds its inode)."""

import os
import stat
import sys
from pathlib import Path

from unionfs.fs.inodes import FIELD_NAMES, Node, NodeStat


def test_every_field_reads_back_as_lstat_gave_it(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 5000)
    os.utime(f, ns=(-1_500_000_000_123, 4_102_444_800_999_999_999))  # before 1970, after 2099
    for path in (f, tmp_path, Path("/dev/null")):
        st = os.lstat(path)
        packed = NodeStat(st)
        for name in FIELD_NAMES:
            assert getattr(packed, name) == getattr(st, name), (path, name)
        assert packed.fields() == tuple(getattr(st, name) for name in FIELD_NAMES)
        assert NodeStat(packed) is packed


def test_with_fields_is_a_changed_copy(tmp_path: Path) -> None:
    st = NodeStat(os.lstat(tmp_path))
    changed = st.with_fields(st_uid=4_000_000_000, st_mode=stat.S_IFCHR | 0o600, st_rdev=259)
    assert (changed.st_uid, changed.st_mode, changed.st_rdev) == (
        4_000_000_000,
        stat.S_IFCHR | 0o600,
        259,
    )
    assert changed.st_ino == st.st_ino and changed.st_mtime_ns == st.st_mtime_ns
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.lstat(tmp_path).st_uid


def test_a_node_keeps_its_lstat_in_one_small_object(tmp_path: Path) -> None:
    node = Node(2, None, b"f", (), os.lstat(tmp_path))
    assert isinstance(node.st, NodeStat)
    # 76 bytes of fields and the object header: one 128-byte block of pymalloc,
    # where an object of thirteen ints took about 300 bytes.
    assert sys.getsizeof(node.st) <= 128
