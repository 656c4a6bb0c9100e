"""Owner mapping and ``volatile`` in the filesystem core, without a mount:
what `UnionFS` stores for owners given through the mount, what it reports for
owners on disk, and fsync that does not reach the upper layer."""

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import File, build_stack
from unionfs.fs.inodes import ROOT_INO
from unionfs.fs.layer import Layer as FsLayer
from unionfs.fs.owners import IDENTITY, OVERFLOW_ID, IdMap, IdRange
from unionfs.fs.upper import Upper
from unionfs.fs.vfs import UnionFS

MAP = IdMap((IdRange(0, 1000, 1), IdRange(1, 100000, 65536)))


def _open(
    tmp_path: Path, *, sync: bool = True, uids: IdMap = IDENTITY, gids: IdMap = IDENTITY
) -> UnionFS:
    lowers = build_stack([[File("f", b"x", uid=1000, gid=100005)]], tmp_path / "l", "chardev")
    (tmp_path / "u").mkdir()
    (tmp_path / "w").mkdir()
    layers = [FsLayer.open(i, p) for i, p in enumerate([tmp_path / "u", *lowers])]
    upper = Upper.open(layers[0], tmp_path / "w", oci_whiteouts=False)
    return UnionFS(layers, upper=upper, sync=sync, uids=uids, gids=gids)


@pytest.fixture
def mapped(tmp_path: Path) -> Iterator[UnionFS]:
    fs = _open(tmp_path, uids=MAP, gids=MAP)
    yield fs
    fs.close()
    assert fs.upper is not None
    fs.upper.close()
    for la in fs.layers:
        la.close()


def test_idmap_ranges_and_squash() -> None:
    assert [MAP.shown(h) for h in (1000, 100000, 165535, 999, 165536)] == [
        0, 1, 65536, OVERFLOW_ID, OVERFLOW_ID,
    ]  # fmt: skip
    assert [MAP.stored(c) for c in (0, 1, 65536, 65537)] == [1000, 100000, 165535, None]
    squash = IdMap(MAP.ranges, squash=0)
    assert squash.shown(100000) == 0 and squash.stored(1) == 100000
    assert IdMap().shown(5) == 5 and IdMap().stored(5) == 5 and IdMap().identity


def test_owners_shown_and_stored(mapped: UnionFS, tmp_path: Path) -> None:
    f = mapped.lookup(ROOT_INO, b"f")
    assert mapped.shown_owner(f.st) == (0, 6)
    fh, new = mapped.create(ROOT_INO, b"new", 0o644, os.O_WRONLY, 0, 1)
    mapped.release(fh)
    st = os.lstat(tmp_path / "u" / "new")
    assert (st.st_uid, st.st_gid) == (1000, 100000)
    assert mapped.shown_owner(new.st) == (0, 1)
    mapped.setattr(f.ino, None, uid=2, gid=None)  # copy-up, then chown
    st = os.lstat(tmp_path / "u" / "f")
    assert (st.st_uid, st.st_gid) == (100001, 100005)
    with pytest.raises(OSError) as exc:
        mapped.setattr(f.ino, None, uid=70000)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(OSError) as exc:
        mapped.mkdir(ROOT_INO, b"d", 0o755, 70000, 0)
    assert exc.value.errno == errno.EINVAL


@pytest.mark.parametrize("sync", [True, False])
def test_volatile_fsync_never_reaches_the_file(tmp_path: Path, sync: bool) -> None:
    fs = _open(tmp_path, sync=sync)
    try:
        fh, _ = fs.create(ROOT_INO, b"new", 0o644, os.O_WRONLY, 0, 0)
        fs.release(fh)  # fh is closed: only a real fsync notices
        if sync:
            with pytest.raises(OSError) as exc:
                fs.fsync(fh, datasync=False)
            assert exc.value.errno == errno.EBADF
        else:
            fs.fsync(fh, datasync=False)
            fs.fsync(fh, datasync=True)
    finally:
        fs.close()
        assert fs.upper is not None
        fs.upper.close()
        for la in fs.layers:
            la.close()
