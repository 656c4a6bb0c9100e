"""The ids inside POSIX ACLs under an owner mapping (``uidmapping=``,
``gidmapping=``), without a mount: the pure translation in `unionfs.fs.owners`,
and what `UnionFS` shows, stores, copies up and lets new entries inherit."""

import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Dir, File, Layer, build_stack
from unionfs.fs.inodes import ROOT_INO
from unionfs.fs.layer import Layer as FsLayer
from unionfs.fs.owners import (
    IDENTITY,
    OVERFLOW_ID,
    IdMap,
    IdRange,
    acl_shown,
    acl_stored,
    map_acl,
)
from unionfs.fs.upper import Upper
from unionfs.fs.vfs import UnionFS

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
NO_ID = 0xFFFFFFFF
#: Inside 0 is 1000 on disk, inside 1.. is 100000..
MAP = IdMap((IdRange(0, 1000, 1), IdRange(1, 100000, 65536)))


def acl(*named: tuple[int, int, int]) -> bytes:
    """A valid version-2 ACL: owner rw, group r, others none, plus `named`
    (tag, perm, id) entries and a mask."""
    entries = [(USER_OBJ, 6, NO_ID), (GROUP_OBJ, 4, NO_ID), (MASK, 7, NO_ID), (OTHER, 0, NO_ID)]
    entries += list(named)
    entries.sort(key=lambda e: (e[0], e[2]))
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_ids_shown_and_stored() -> None:
    stored = acl((USER, 4, 100004), (USER, 6, 1000), (GROUP, 4, 100009))
    shown = acl((USER, 4, 5), (USER, 6, 0), (GROUP, 4, 10))
    assert acl_shown(stored, MAP, MAP) == shown
    assert acl_stored(shown, MAP, MAP) == stored
    # uids and gids each go through their own map.
    only_uids = acl_shown(stored, MAP, IDENTITY)
    assert only_uids == acl((USER, 4, 5), (USER, 6, 0), (GROUP, 4, 100009))


def test_an_unmapped_id() -> None:
    """Shown as the overflow id, like an unmapped owner; refused on the way
    in (EINVAL, as the kernel on an idmapped mount)."""
    assert acl_shown(acl((USER, 4, 7)), MAP, MAP) == acl((USER, 4, OVERFLOW_ID))
    assert acl_stored(acl((USER, 4, 65537)), MAP, MAP) is None
    assert acl_stored(acl((GROUP, 4, 65537)), MAP, MAP) is None
    assert acl_stored(acl((USER, 4, 65536)), MAP, MAP) == acl((USER, 4, 165535))


def test_entries_without_ids_and_odd_values_pass_unchanged() -> None:
    plain = acl()
    assert acl_shown(plain, MAP, MAP) == plain and acl_stored(plain, MAP, MAP) == plain
    for odd in (b"", b"\x02\x00\x00", b"\x01\x00\x00\x00" + b"\x02\x00\x04\x00\x05\x00\x00\x00",
                acl((USER, 4, 5))[:-1]):  # fmt: skip
        assert map_acl(odd, lambda i: None, lambda i: None) == odd


def test_squash_leaves_acl_ids_alone() -> None:
    """Squashing names the owner only; the users an ACL names keep their ids."""
    squash = IdMap(MAP.ranges, squash=0)
    assert acl_shown(acl((USER, 4, 100004)), squash, squash) == acl((USER, 4, 5))
    only_squash = IdMap(squash=0)
    assert acl_shown(acl((USER, 4, 100004)), only_squash, only_squash) == acl((USER, 4, 100004))


@pytest.fixture
def mapped(tmp_path: Path) -> Iterator[UnionFS]:
    stack: list[Layer] = [[File("f", b"x", uid=1000, gid=1000), File("g", b"y"), Dir("d")]]
    (lower,) = build_stack(stack, tmp_path / "l", "chardev")
    os.setxattr(lower / "g", ACCESS, acl((USER, 4, 100004)))
    os.setxattr(lower / "d", DEFAULT, acl((USER, 6, 100007), (GROUP, 4, 1000)))
    (tmp_path / "u").mkdir()
    (tmp_path / "w").mkdir()
    layers = [FsLayer.open(i, p) for i, p in enumerate([tmp_path / "u", lower])]
    upper = Upper.open(layers[0], tmp_path / "w", oci_whiteouts=False)
    fs = UnionFS(layers, upper=upper, uids=MAP, gids=MAP)
    yield fs
    fs.close()
    upper.close()
    for la in layers:
        la.close()


def test_set_stores_outside_ids_and_get_shows_inside(mapped: UnionFS, tmp_path: Path) -> None:
    f = mapped.lookup(ROOT_INO, b"f")
    mapped.setxattr(f.ino, ACCESS, acl((USER, 4, 5), (GROUP, 4, 0)))
    on_disk = os.getxattr(tmp_path / "u/f", ACCESS)
    assert on_disk == acl((USER, 4, 100004), (GROUP, 4, 1000))
    assert mapped.getxattr(f.ino, ACCESS) == acl((USER, 4, 5), (GROUP, 4, 0))


def test_an_unmapped_id_fails_before_copy_up(mapped: UnionFS, tmp_path: Path) -> None:
    f = mapped.lookup(ROOT_INO, b"f")
    with pytest.raises(OSError) as exc:
        mapped.check_settable(ACCESS, acl((USER, 4, 70000)))
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(OSError) as exc:
        mapped.setxattr(f.ino, ACCESS, acl((USER, 4, 70000)))
    assert exc.value.errno == errno.EINVAL
    assert not (tmp_path / "u/f").exists()
    mapped.check_settable(b"user.other", acl((USER, 4, 70000)))  # not an ACL: as is


def test_copy_up_and_inheritance_keep_the_stored_form(mapped: UnionFS, tmp_path: Path) -> None:
    g = mapped.lookup(ROOT_INO, b"g")
    assert mapped.getxattr(g.ino, ACCESS) == acl((USER, 4, 5))
    mapped.setxattr(g.ino, b"user.x", b"1")  # copies g up
    assert os.getxattr(tmp_path / "u/g", ACCESS) == acl((USER, 4, 100004))
    assert mapped.getxattr(g.ino, ACCESS) == acl((USER, 4, 5))

    d = mapped.lookup(ROOT_INO, b"d")
    assert mapped.getxattr(d.ino, DEFAULT) == acl((USER, 6, 8), (GROUP, 4, 0))
    fh, new = mapped.create(d.ino, b"new", 0o640, os.O_WRONLY, 0, 0)
    mapped.release(fh)
    sub = mapped.mkdir(d.ino, b"sub", 0o750, 0, 0)
    assert os.getxattr(tmp_path / "u/d", DEFAULT) == acl((USER, 6, 100007), (GROUP, 4, 1000))
    access = os.getxattr(tmp_path / "u/d/new", ACCESS)
    assert struct.pack("<HHI", USER, 6, 100007) in access
    assert struct.pack("<HHI", GROUP, 4, 1000) in access
    assert os.getxattr(tmp_path / "u/d/sub", DEFAULT) == os.getxattr(tmp_path / "u/d", DEFAULT)
    shown = mapped.getxattr(new.ino, ACCESS)
    assert struct.pack("<HHI", USER, 6, 8) in shown and struct.pack("<HHI", GROUP, 4, 0) in shown
    assert mapped.getxattr(sub.ino, DEFAULT) == acl((USER, 6, 8), (GROUP, 4, 0))
