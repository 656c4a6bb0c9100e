"""Whiteout and opaque-directory formats, as read from a layer.

Three whiteout forms hide a lower name (all are recognised, none is shown):

* overlayfs: a character device with device number 0/0;
* overlayfs "xattr whiteout": a zero-size regular file carrying
  ``trusted.overlay.whiteout`` or ``user.overlay.whiteout``;
* OCI: an entry ``.wh.NAME`` next to the hidden ``NAME``.

Three markers make a directory opaque (it cuts off every lower layer):

* ``trusted.overlay.opaque`` = ``y`` or ``user.overlay.opaque`` = ``y``
  (the value ``x`` only says "this directory holds xattr whiteouts");
* an OCI entry ``.wh..wh..opq`` inside the directory.

Names starting with ``.wh.`` are reserved by the OCI format: they can never be
visible names of the merged view.
"""

import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unionfs.fs.inodes import NodeStat

OCI_PREFIX = b".wh."
OCI_OPAQUE = b".wh..wh..opq"
WHITEOUT_XATTRS = (b"trusted.overlay.whiteout", b"user.overlay.whiteout")
OPAQUE_XATTRS = (b"trusted.overlay.opaque", b"user.overlay.opaque")
OPAQUE_YES = b"y"
# overlayfs redirect_dir: where a renamed directory's lower content lives.
REDIRECT_XATTRS = (b"trusted.overlay.redirect", b"user.overlay.redirect")
PRIVATE_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")


def is_reserved_name(name: bytes) -> bool:
    """True for names the OCI whiteout format claims (``.wh.*``)."""
    return name.startswith(OCI_PREFIX)


def oci_whiteout_target(name: bytes) -> bytes | None:
    """The name an OCI whiteout entry hides, or None if `name` is not one.

    The opaque marker ``.wh..wh..opq`` is not a whiteout of anything.
    """
    if not name.startswith(OCI_PREFIX) or name == OCI_OPAQUE:
        return None
    target = name[len(OCI_PREFIX) :]
    return target or None


def is_chardev_whiteout(st: "os.stat_result | NodeStat") -> bool:
    """The overlayfs whiteout: a character device 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def may_be_xattr_whiteout(st: "os.stat_result | NodeStat") -> bool:
    """Only zero-size regular files can be xattr whiteouts (cheap pre-check)."""
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def is_private_xattr(name: bytes) -> bool:
    """Overlay bookkeeping attributes, never shown through the mount."""
    return name.startswith(PRIVATE_XATTR_PREFIXES)


# As overlayfs does for nested overlays: an attribute trusted.overlay.X set
# through the mount is stored as trusted.overlay.overlay.X and shown as
# trusted.overlay.X; the layer's own trusted.overlay.* stay hidden.
_TRUSTED = b"trusted.overlay."
_ESCAPED = b"trusted.overlay.overlay."


#: A rootless layer's record of an entry's real owner and mode
#: (`unionfs.fs.overridestat`): hidden like the overlay's own, but copied up
#: with the entry (it is not in PRIVATE_XATTR_PREFIXES).
OVERRIDE_STAT_XATTR = b"user.containers.override_stat"


def visible_xattr(stored: bytes) -> bytes | None:
    """The name a stored attribute has through the mount (None: hidden)."""
    if stored.startswith(_ESCAPED):
        return _TRUSTED + stored[len(_ESCAPED) :]
    return None if is_private_xattr(stored) or stored == OVERRIDE_STAT_XATTR else stored


def stored_xattr(visible: bytes) -> bytes | None:
    """Where an attribute named through the mount is stored (None: refused,
    for the unescaped user.overlay.* bookkeeping names and the override record)."""
    if visible.startswith(_TRUSTED):
        return _ESCAPED + visible[len(_TRUSTED) :]
    if visible == OVERRIDE_STAT_XATTR:
        return None
    return None if is_private_xattr(visible) else visible
