"""Owner mapping: the ids a mount shows against the ids its layers hold.

fuse-overlayfs's ``uidmapping=``/``gidmapping=`` (ranges
``container:host:size``) and ``squash_to_*`` options, FUSE-free: the daemon
translates every owner it reports with `IdMap.shown` and every owner it writes
(chown, a new entry's creator) with `IdMap.stored`.

The uids and gids named inside POSIX ACLs (``system.posix_acl_access`` and
``system.posix_acl_default``, Linux's xattr form) are translated the same way
(`acl_shown`, `acl_stored`), as the kernel does for an idmapped mount: the
kernel evaluates the ACL a FUSE daemon reports against the caller's ids exactly
as it does the owner the daemon reports, so both must be in the shown ids. An
ACL is copied (copy-up, a default ACL inherited by a new entry) only in its
stored form. Squashing is for owners only: the users and groups an ACL names
keep their (mapped) ids.
"""

import struct
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class IdRange:
    """One range of a fuse-overlayfs ``uidmapping=``/``gidmapping=``: ids
    ``inside .. inside+size-1`` as the mount shows them are ``outside ..`` on disk."""

    inside: int
    outside: int
    size: int


#: The id shown for an owner on disk that no range maps (the kernel's overflow id).
OVERFLOW_ID = 65534


@dataclass(frozen=True)
class IdMap:
    """fuse-overlayfs's dynamic owner mapping plus its squash options.

    Invariant: with no ranges and no squash an id is shown and stored as is.
    `shown` turns a disk owner into what stat reports (unmapped: OVERFLOW_ID;
    squash wins over everything); `stored` turns an owner given through the
    mount (chown, a creating caller) into the one written (unmapped: EINVAL,
    reported as None).
    """

    ranges: tuple[IdRange, ...] = ()
    squash: int | None = None

    @property
    def identity(self) -> bool:
        return not self.ranges and self.squash is None

    def shown(self, outside: int) -> int:
        if self.squash is not None:
            return self.squash
        return self.mapped(outside)

    def mapped(self, outside: int) -> int:
        """`shown` without the squash: the id an ACL entry shows."""
        if not self.ranges:
            return outside
        for r in self.ranges:
            if r.outside <= outside < r.outside + r.size:
                return outside - r.outside + r.inside
        return OVERFLOW_ID

    def stored(self, inside: int) -> int | None:
        if not self.ranges:
            return inside
        for r in self.ranges:
            if r.inside <= inside < r.inside + r.size:
                return inside - r.inside + r.outside
        return None


#: Owners shown and stored as they are.
IDENTITY = IdMap()


#: The POSIX ACL xattrs whose entries name users and groups.
ACL_XATTRS = frozenset({b"system.posix_acl_access", b"system.posix_acl_default"})
#: Linux's xattr form: a little-endian u32 version (2), then (tag u16, perm
#: u16, id u32) entries; only ACL_USER and ACL_GROUP entries carry an id.
ACL_XATTR_VERSION = 2
ACL_USER = 0x02
ACL_GROUP = 0x08
_ACL_HEADER = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")


def map_acl(
    value: bytes, uid: Callable[[int], int | None], gid: Callable[[int], int | None]
) -> bytes | None:
    """`value` (an ACL xattr) with each ACL_USER id replaced by ``uid(id)``
    and each ACL_GROUP id by ``gid(id)``; None when one of them gives None.
    A value that is not a version-2 ACL is returned unchanged (the filesystem
    judges it: setting it fails EINVAL there)."""
    body = len(value) - _ACL_HEADER.size
    if body < 0 or body % _ACL_ENTRY.size or _ACL_HEADER.unpack_from(value)[0] != ACL_XATTR_VERSION:
        return value
    out = bytearray(value)
    for off in range(_ACL_HEADER.size, len(value), _ACL_ENTRY.size):
        tag, perm, ident = _ACL_ENTRY.unpack_from(value, off)
        if tag == ACL_USER:
            new = uid(ident)
        elif tag == ACL_GROUP:
            new = gid(ident)
        else:
            continue
        if new is None:
            return None
        _ACL_ENTRY.pack_into(out, off, tag, perm, new)
    return bytes(out)


def acl_shown(value: bytes, uids: IdMap, gids: IdMap) -> bytes:
    """An ACL as stored -> as the mount shows it (an id no range maps shows
    as OVERFLOW_ID, as an owner does: the kernel's own answer, -1, would make
    the whole ACL invalid to the FUSE kernel module)."""
    if not uids.ranges and not gids.ranges:
        return value
    shown = map_acl(value, uids.mapped, gids.mapped)
    assert shown is not None  # mapped() always answers
    return shown


def acl_stored(value: bytes, uids: IdMap, gids: IdMap) -> bytes | None:
    """An ACL given through the mount -> as stored; None (EINVAL, as the
    kernel answers on an idmapped mount) when it names an id no range maps."""
    if not uids.ranges and not gids.ranges:
        return value
    return map_acl(value, uids.stored, gids.stored)
