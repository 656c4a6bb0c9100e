"""Store mounts in the mount table: the source name they show, and finding them.

A mount of a store image or container shows ``unionfs:<kind>:<short id>`` as its
source (``fsname``); that is how ``rmi`` and ``rm`` find what is still mounted.
"""

from unionfs.fuse.mounttab import FSTYPE, mounts
from unionfs.store.records import short_id


def mount_source(kind: str, object_id: str) -> str:
    """The source name a store mount shows in the mount table (``fsname``)."""
    return f"unionfs:{kind}:{short_id(object_id)}"


def _mounts_with_source(source: str) -> list[str]:
    return [m.mountpoint for m in mounts() if m.fstype == FSTYPE and m.source == source]


def mounts_of_container(cid: str) -> list[str]:
    return _mounts_with_source(mount_source("container", cid))


def mounts_of_image(image_id: str) -> list[str]:
    return _mounts_with_source(mount_source("image", image_id))
