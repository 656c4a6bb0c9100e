"""Looking a name up through the layers as overlayfs does, redirects included
(fs/overlayfs/namei.c): the I/O side of `unionfs.fs.merge.resolve` for
`Core.resolve_child`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from unionfs.fs import layer as io
from unionfs.fs.inodes import Node
from unionfs.fs.merge import Copy, Kind, Location

if TYPE_CHECKING:
    from unionfs.fs.core import Core

log = logging.getLogger(__name__)


class Search:
    """One name looked up through the layers, following redirects as overlayfs
    does (fs/overlayfs/namei.c).

    The name is looked up in the parent's copy in each layer it merges, top
    first, until a directory copy found carries a redirect: a relative one
    (``b``) changes the name looked up in the parent's copies below; an
    absolute one (``/a/b``) continues in every layer below, from the root,
    where each component of the path counts too (a whiteout or non-directory
    ends the search, an opaque directory stops it after this layer, a redirect
    rewrites the rest of the path for the layers below). An opaque copy ignores
    its redirect. `where` records the copies that are not under `name` in the
    parent's copy; `redirect` is the top directory copy's own redirect.
    """

    def __init__(self, core: Core, parent: Node, name: bytes, why: bool) -> None:
        self.core = core
        self.parent = parent
        self.name = name
        self.why = why
        self.stats: dict[int, os.stat_result | None] = {}
        self.where: dict[int, Location] = {}
        self.redirect: bytes | None = None
        self.rel = name  # the name looked up in the parent's copies
        self.path: tuple[bytes, ...] | None = None  # after an absolute redirect
        self.layers = [c.layer for c in parent.copies]
        self.restart_after: int | None = None
        self.stop_at: int | None = None  # an opaque ancestor on the path
        self.first = True  # the next directory copy asked about is the top one
        self.bottom = len(core.layers) - 1

    def observations(self) -> Iterator[Copy]:
        parent_bottom = self.layers[-1]
        i = 0
        while i < len(self.layers):
            layer = self.layers[i]
            i += 1
            if self.path is None:
                fd = self.core.dir_fd(self.parent, layer)
                oci = self.why or layer != parent_bottom
                copy, st = io.observe(layer, fd, self.rel, oci=oci)
                if self.rel != self.name:
                    self.where[layer] = self.rel
            else:
                copy, st = self._observe_path(layer, self.path)
            self.stats[layer] = st
            yield copy
            if self.restart_after == layer:
                # An absolute redirect: every layer below, from the root.
                self.layers = list(range(layer + 1, len(self.core.layers)))
                i = 0
                self.restart_after = None

    def _observe_path(
        self, layer: int, path: tuple[bytes, ...]
    ) -> tuple[Copy, os.stat_result | None]:
        root = self.core.layers[layer].root_fd
        fd = root
        rest = path
        try:
            for k, part in enumerate(path[:-1]):
                copy, st = io.observe(layer, fd, part)
                if copy.kind is Kind.ABSENT:
                    return copy, None
                if copy.kind is not Kind.DIR:
                    # A whiteout or a file on the way ends the directory.
                    return io.copy_of(layer, Kind.WHITEOUT), None
                nxt = io.open_dir_at(fd, part)
                if fd != root:
                    os.close(fd)
                fd = nxt
                if io.is_opaque_dir(fd):
                    self.stop_at = layer
                    continue
                value = io.redirect_at(fd, b".")
                loc = io.parse_redirect(value) if value else None
                if isinstance(loc, tuple):
                    rest = (*loc, *path[k + 1 :])
                    self.stop_at = None
                elif loc is not None:
                    rest = (*rest[:k], loc, *path[k + 1 :])
            copy, st = io.observe(layer, fd, path[-1])
            if copy.kind is Kind.DIR:
                self.where[layer] = path
            self.path = rest
            return copy, st
        finally:
            if fd != root:
                os.close(fd)

    def is_opaque(self, copy: Copy) -> bool:
        """Whether the search ends at this directory copy; reads its redirect."""
        layer = copy.layer
        first, self.first = self.first, False
        if self.stop_at == layer:
            return True
        if layer == self.bottom:
            return False  # nothing below the bottom layer to cut off
        names: list[bytes] | None = None
        if self.path is None:
            pfd = self.core.dir_fd(self.parent, layer)
            # One listxattr answers both: the redirect, and whether an opaque
            # xattr is there to read.
            names = io.listxattr_at(pfd, self.rel)
            value = io.redirect_at(pfd, self.rel, names)
            if value is None and layer == self.layers[-1]:
                return False  # the bottom of the parent's stack, no redirect
            fd = io.open_dir_at(pfd, self.rel)
        else:
            located = self.where[layer]
            assert isinstance(located, tuple)
            fd = io.open_path(self.core.layers[layer].root_fd, located)
            value = None
        try:
            if self.path is not None:
                value = io.redirect_at(fd, b".")
            if io.is_opaque_dir(fd, names):
                return True  # an opaque directory ignores its redirect
        finally:
            os.close(fd)
        if value is None:
            return False
        loc = io.parse_redirect(value)
        if loc is None:
            log.warning("invalid redirect %r ignored (layer %d)", value, layer)
            return False
        if first:
            self.redirect = value
        if isinstance(loc, tuple):
            self.path = loc
            self.restart_after = layer
        elif self.path is None:
            self.rel = loc
        else:
            self.path = (*self.path[:-1], loc)
        return False
