"""POSIX ACLs through a mount with ``uidmapping=``/``gidmapping=``: the ids an
ACL names are stored in the layers' (outside) ids and shown in the mount's
(inside) ids, like owners, and the kernel enforces them.

Which ids the kernel compares: with FUSE_POSIX_ACL it takes the ACL from the
daemon's getxattr answer and evaluates it against the caller's fsuid, in the
user namespace the mount was made in, exactly as it does the owner the daemon
reports in getattr. Owners are reported in the inside ids, so ACL entries must
be too: a caller whose uid is the inside id gets what the entry grants. (For a
mount made on the host, as here, that is the caller's host uid; for a mount made
in a container's user namespace, as rootless podman does, the uid in the
namespace.) Kernel overlayfs on an idmapped mount does the same translation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kernel import TmpMounts
from tests.support.users import temporary_user

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(shutil.which("setfacl") is None, reason="needs setfacl (package acl)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a user"),
]

#: Outside (on disk) id = inside id + SHIFT, for the test user's ids.
SHIFT = 300000


def _entry_ids(value: bytes) -> dict[tuple[int, int], int]:
    """(tag, id) -> perm of the named entries of an ACL xattr value."""
    out = {}
    for off in range(4, len(value), 8):
        tag, perm, ident = (int.from_bytes(value[off + a : off + b], "little")
                            for a, b in ((0, 2), (2, 4), (4, 8)))  # fmt: skip
        if tag in (0x02, 0x08):
            out[tag, ident] = perm
    return out


def _as(uid: int, gid: int, mnt: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run `script` with sh as `uid`:`gid` in the mount's root, entered through
    an inherited directory fd (the test's temp dirs above it are root's own)."""
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
             "/bin/sh", "-c", f"cd /proc/self/fd/{fd} || exit 99\n{script}"],
            pass_fds=(fd,),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )  # fmt: skip
    finally:
        os.close(fd)


@pytest.fixture
def user() -> Iterator[tuple[int, int]]:
    with temporary_user("ufsmap") as pw:
        yield pw.pw_uid, pw.pw_gid


def test_acl_ids_are_mapped_and_enforced(
    user: tuple[int, int], tmp_mounts: TmpMounts, tmp_path: Path
) -> None:
    uid, gid = user
    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    for d in (lower, upper, work):
        d.mkdir()
    secret = lower / "secret"
    secret.write_bytes(b"secret\n")
    os.chmod(secret, 0o600)  # root's; only an ACL lets the user in
    (lower / "shared").mkdir(mode=0o700)
    (lower / "other").write_bytes(b"o")
    maps = f"0:0:1:{uid}:{uid + SHIFT}:1"
    gmaps = f"0:0:1:{gid}:{gid + SHIFT}:1"
    opts = f"lowerdir={lower},upperdir={upper},workdir={work},uidmapping={maps},gidmapping={gmaps}"
    mnt = tmp_mounts.unionfs([], args=["-o", opts])

    denied = _as(uid, gid, mnt, "cat secret")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr

    subprocess.run(["setfacl", "-m", f"u:{uid}:r", str(mnt / "secret")], check=True)
    stored = os.getxattr(upper / "secret", "system.posix_acl_access")
    assert _entry_ids(stored) == {(0x02, uid + SHIFT): 4}
    shown = subprocess.run(["getfacl", "-n", "-p", str(mnt / "secret")], check=True,
                           capture_output=True, text=True).stdout  # fmt: skip
    assert f"user:{uid}:r--" in shown and str(uid + SHIFT) not in shown
    allowed = _as(uid, gid, mnt, "cat secret")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == "secret\n"

    # A group entry and a default ACL: stored outside, shown inside, inherited
    # in the stored form, and a new file the user makes there is the user's.
    shared = mnt / "shared"
    subprocess.run(["setfacl", "-m", f"g:{gid}:rwx", "-d", "-m", f"g:{gid}:rwx", str(shared)],
                   check=True)  # fmt: skip
    assert _entry_ids(os.getxattr(upper / "shared", "system.posix_acl_default")) == {
        (0x08, gid + SHIFT): 7
    }
    made = _as(uid, gid, mnt, "touch shared/new")
    assert made.returncode == 0, made.stderr
    st = os.stat(upper / "shared/new")
    assert (st.st_uid, st.st_gid) == (uid + SHIFT, gid + SHIFT)
    assert _entry_ids(os.getxattr(upper / "shared/new", "system.posix_acl_access")) == {
        (0x08, gid + SHIFT): 7
    }
    shown = subprocess.run(["getfacl", "-n", "-p", str(shared / "new")], check=True,
                           capture_output=True, text=True).stdout  # fmt: skip
    assert f"group:{gid}:rwx" in shown and "mask::rw-" in shown

    # An id no range maps cannot be written (EINVAL, as the kernel on an
    # idmapped mount), and nothing was copied up for the attempt.
    refused = subprocess.run(["setfacl", "-m", "u:4242:r", str(mnt / "other")],
                             capture_output=True, text=True, check=False)  # fmt: skip
    assert refused.returncode != 0 and "Invalid argument" in refused.stderr
    assert not (upper / "other").exists()
