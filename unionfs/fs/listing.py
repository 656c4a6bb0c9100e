"""Directory listings of `UnionFS`: the merged entries of a directory, and
the directory handles (opendir/readdir/releasedir) that serve them.

A listing is taken when a read starts at offset 0 (the first read, or after
rewinddir) and kept with the handle, so a listing resumed at any offset never
repeats or skips a name. Attributes are refreshed for every entry returned.
"""

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from unionfs.fs import layer as io
from unionfs.fs import whiteout
from unionfs.fs.core import Core, _err
from unionfs.fs.inodes import Node, StatLike
from unionfs.fs.layer import NAME_MAX
from unionfs.fs.merge import Copy, Kind, resolve

_DOTS = (b".", b"..")


@dataclass(slots=True)
class DirListing:
    """A directory's merged entries, taken when a read starts at offset 0.

    Offsets handed to the kernel are positions in `entries` (plus one), so a
    listing resumed at any offset never repeats or skips a name.
    """

    node: Node
    entries: list[tuple[bytes, Node]]


class Listings(Core):
    """Merged directory listings and directory handles."""

    def list_dir(self, node: Node) -> list[tuple[bytes, Node]]:
        """The merged entries of a directory, top layer's names first."""
        per_name: dict[bytes, list[tuple[Copy, StatLike | None]]] = {}
        fds: dict[int, int] = {}
        for dc in node.copies:
            fd = self.dir_fd(node, dc.layer)
            fds[dc.layer] = fd
            for name, st in io.scan_dir(fd):
                if name == whiteout.OCI_OPAQUE:
                    continue
                target = whiteout.oci_whiteout_target(name)
                if target is not None:
                    copies = per_name.setdefault(target, [])
                    if not copies or copies[-1][0].layer != dc.layer:
                        copies.append((Copy(dc.layer, Kind.WHITEOUT), None))
                    continue
                copies = per_name.setdefault(name, [])
                if copies and copies[-1][0].layer == dc.layer:
                    copies.pop()  # a real entry beats an OCI whiteout of itself
                copies.append((io.classify(dc.layer, fd, name, st), st))

        entries: list[tuple[bytes, Node]] = [(b".", node), (b"..", node.parent or node)]
        bottom = len(self.layers) - 1
        for name, seen in per_name.items():
            if len(name) > NAME_MAX:
                continue
            below = {c.layer: i for i, (c, _) in enumerate(seen)}
            redirected: list[bool] = []

            def is_opaque(
                copy: Copy,
                seen: list[tuple[Copy, StatLike | None]] = seen,
                below: dict[int, int] = below,
                name: bytes = name,
                redirected: list[bool] = redirected,
            ) -> bool:
                if copy.layer == bottom:
                    return False  # nothing below: opacity changes nothing
                # One listxattr answers both the redirect and the opaque xattrs.
                names = io.listxattr_at(fds[copy.layer], name)
                if io.redirect_at(fds[copy.layer], name, names) is not None:
                    redirected.append(True)  # resolved again below, following it
                    return True
                if below[copy.layer] == len(seen) - 1:
                    return False  # no copy below: opacity changes nothing
                fd = io.open_dir_at(fds[copy.layer], name)
                try:
                    return io.is_opaque_dir(fd, names)
                finally:
                    os.close(fd)

            res = resolve((c for c, _ in seen), is_opaque)
            if not res.exists:
                continue
            if redirected:
                # A renamed directory: its lower content is elsewhere.
                res, found = self.resolve_child(node, name)
                if found is None:
                    continue
                top_st: StatLike | None = found
            else:
                top_st = seen[below[res.visible[0].layer]][1]
            assert top_st is not None  # a visible copy always has its lstat
            child = self._node_for(node, name, res.visible, top_st, where=res.where)
            entries.append((name, child))
        return entries

    def opendir(self, ino: int) -> int:
        node = self.node(ino)
        if not stat.S_ISDIR(node.st.st_mode):
            raise _err(errno.ENOTDIR)
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        self._listings[fh] = DirListing(node, [])
        return fh

    def readdir(self, fh: int, start: int) -> Iterator[tuple[bytes, Node, int]]:
        """Entries from offset `start` on, each with the offset that follows it.

        The listing is taken when a read starts at offset 0 (the first read, or
        after rewinddir) and kept for the reads that continue it."""
        listing = self._listings[fh]
        if start == 0:
            listing.entries = self.list_dir(listing.node)
        entries = listing.entries
        for i in range(start, len(entries)):
            name, node = entries[i]
            # Attributes go to the kernel with each entry: upper entries may have
            # changed since the listing was taken.
            yield name, self.refresh(node), i + 1

    def entry_returned(self, name: bytes, node: Node) -> None:
        """The kernel accepted a readdir entry: it now holds a lookup on it
        (except for "." and "..", which readdirplus never links)."""
        if name not in _DOTS:
            self.inodes.remember(node)

    def entry_not_returned(self, node: Node) -> None:
        self.inodes.drop_if_unused(node)

    def releasedir(self, fh: int) -> None:
        listing = self._listings.pop(fh)
        for _, node in listing.entries:
            self.inodes.drop_if_unused(node)

    def listing_node(self, fh: int) -> Node:
        return self._listings[fh].node
