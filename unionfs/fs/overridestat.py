"""Owners and modes a rootless layer cannot hold: ``user.containers.override_stat``.

A process that is not root cannot chown a file to another owner, set a
set-id bit on a file it does not own as that owner, or make a device node.
containers/storage (rootless, with ``force_mask``) and unionfs then keep the
real owner and mode in the ``user.containers.override_stat`` attribute of the
file, and fuse-overlayfs reads it back (the convention this module follows):

    ``UID:GID:MODE[:TYPE]`` -- decimal ids, the permission bits in octal with a
    leading 0 (``0:0:04755``), and in newer writers a type: ``file``, ``dir``,
    ``symlink``, ``pipe``, ``socket``, ``char-MAJOR-MINOR`` or
    ``block-MAJOR-MINOR``.

A rootless unpack (`unionfs.image.extract`) records every regular file and
directory of a layer this way, the layer root included (which marks the
layer), and gives a device node, which it cannot make, as an empty regular
file recording it.

Invariants:

* only regular files and directories carry it (the kernel allows ``user.*``
  attributes on nothing else); symlinks, fifos and sockets keep the owner of
  whoever wrote them, as with containers/storage;
* a device node is stored as an empty regular file whose type field names
  it; `shown` turns it back into the device (fuse-overlayfs 1.10 reads only
  ``UID:GID:MODE`` and shows such a file as a regular file);
* the type of a directory never changes, and the type field of a regular file
  is honoured only for ``pipe``, ``socket``, ``char-`` and ``block-``;
* a layer is read this way when its root directory carries the attribute
  (fuse-overlayfs's rule), or when a mount asks for it (``xattr_permissions=``);
* the attribute is bookkeeping: a mount never lists it, and a tar never
  carries it (exported headers carry the owner and mode it records).
"""

import errno
import os
import stat
from dataclasses import dataclass

from unionfs.fs import whiteout
from unionfs.fs.inodes import NodeStat, StatLike

XATTR = whiteout.OVERRIDE_STAT_XATTR

_TYPES = {
    stat.S_IFREG: b"file",
    stat.S_IFDIR: b"dir",
    stat.S_IFLNK: b"symlink",
    stat.S_IFIFO: b"pipe",
    stat.S_IFSOCK: b"socket",
}
_KINDS = {name: kind for kind, name in _TYPES.items()}
_DEVICES = {b"char": stat.S_IFCHR, b"block": stat.S_IFBLK}


@dataclass(frozen=True)
class Override:
    """One recorded owner and mode. `kind` is the recorded ``S_IFMT`` type
    (None when the value has no type field), `rdev` the device of a
    ``char-``/``block-`` type."""

    uid: int
    gid: int
    mode: int  # permission bits, 0o7777 at most
    kind: int | None = None
    rdev: int = 0


def parse(value: bytes | None) -> Override | None:
    """The override a stored value records; None for no value or one that
    does not parse (then the entry shows as it is on disk)."""
    if not value:
        return None
    parts = value.rstrip(b"\0").split(b":")
    if len(parts) not in (3, 4):
        return None
    try:
        uid, gid, mode = int(parts[0]), int(parts[1]), int(parts[2], 8)
    except ValueError:
        return None
    if not (0 <= uid < 2**32 and 0 <= gid < 2**32 and 0 <= mode <= 0o7777):
        return None
    if len(parts) == 3:
        return Override(uid, gid, mode)
    kind, rdev = _parse_type(parts[3])
    if kind is None:
        return None
    return Override(uid, gid, mode, kind, rdev)


def _parse_type(text: bytes) -> tuple[int | None, int]:
    if text in _KINDS:
        return _KINDS[text], 0
    name, _, rest = text.partition(b"-")
    major, _, minor = rest.partition(b"-")
    if name in _DEVICES and major.isdigit() and minor.isdigit():
        try:
            rdev = os.makedev(int(major), int(minor))
        except (OverflowError, ValueError):
            return None, 0
        if rdev < 2**32:  # the kernel's dev_t (12-bit major, 20-bit minor)
            return _DEVICES[name], rdev
    return None, 0


def format_value(uid: int, gid: int, mode: int, rdev: int = 0) -> bytes:
    """The value recording owner `uid`:`gid` and `mode` (type bits included:
    they give the type field; the permission bits go in octal)."""
    kind = stat.S_IFMT(mode)
    if kind in _DEVICES.values():
        name = b"char" if kind == stat.S_IFCHR else b"block"
        typ = b"%s-%d-%d" % (name, os.major(rdev), os.minor(rdev))
    else:
        typ = _TYPES.get(kind, b"file")
        rdev = 0
    return b"%d:%d:0%o:%s" % (uid, gid, stat.S_IMODE(mode), typ)


def value_of(st: StatLike) -> bytes:
    """The value recording `st`'s owner, mode and type as they are."""
    return format_value(st.st_uid, st.st_gid, st.st_mode, st.st_rdev)


def may_carry(st: StatLike) -> bool:
    """Whether an entry of this type on disk can hold the attribute."""
    return stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)


def shown(st: StatLike, value: bytes | None) -> StatLike:
    """The one place an on-disk lstat and its override become the stat shown:
    owner and permission bits from the override; the type from disk, but for a
    regular file that stands for a fifo, socket or device node. `st` itself
    when there is nothing to apply."""
    ov = parse(value)
    if ov is None or not may_carry(st):
        return st
    kind = stat.S_IFMT(st.st_mode)
    rdev, size, blocks = st.st_rdev, st.st_size, st.st_blocks
    if kind == stat.S_IFREG and ov.kind in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR,
                                             stat.S_IFBLK):  # fmt: skip
        kind, rdev = ov.kind, ov.rdev
        size = blocks = 0
    return NodeStat(st).with_fields(
        st_uid=ov.uid,
        st_gid=ov.gid,
        st_mode=kind | ov.mode,
        st_rdev=rdev,
        st_size=size,
        st_blocks=blocks,
    )


def disk_mode(mode: int) -> int:
    """The permission bits a rootless writer gives the file that records
    `mode` (type bits included): no set-id bits (the file is the writer's own)
    and always readable and writable by it, directories searchable, so the
    daemon, running as that user, can serve and copy every entry."""
    owner = 0o700 if stat.S_ISDIR(mode) else 0o600
    return (stat.S_IMODE(mode) & 0o777) | owner


def record(fd: int, uid: int, gid: int, mode: int, rdev: int = 0) -> None:
    """Record owner, mode (type bits included) and device on the open file or
    directory `fd`, and give it the matching `disk_mode`."""
    os.chmod(fd, disk_mode(mode))  # first: user.* xattrs need write permission
    os.setxattr(fd, XATTR, format_value(uid, gid, mode, rdev))


def mark(fd: int) -> None:
    """Mark the layer whose root directory is open as `fd` as one whose records
    count (fuse-overlayfs looks for the attribute on a layer's root): the root
    records itself as it is, unless it has a record already."""
    try:
        os.getxattr(fd, XATTR)
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
        os.setxattr(fd, XATTR, value_of(os.fstat(fd)))
