"""The merged filesystem's semantics, with no FUSE in sight.

`UnionFS` answers every filesystem request over a stack of read-only layers
and, when it has one, a writable upper layer, in terms of inode numbers,
`bytes` names and `OSError`s. The pyfuse3 adapter (`unionfs.fuse.ops`) only
translates its answers; unit tests call it directly.

It is assembled here from one mixin per concern, over the state they share:

- `core`: construction, the directory-descriptor cache, resolving a name
  across the layers, lookup, forget, getattr, file I/O, readlink, statfs;
- `listing`: merged directory listings and directory handles;
- `copyup`: bringing entries of lower layers into the upper layer;
- `writes`: creating, linking, removing, renaming, setattr;
- `xattrs`: extended attributes.
"""

from unionfs.fs.copyup import CopyUps
from unionfs.fs.core import Core
from unionfs.fs.listing import Listings
from unionfs.fs.writes import Writes
from unionfs.fs.xattrs import Xattrs


class UnionFS(Writes, Xattrs, CopyUps, Listings, Core):
    """A union of layer directories (index 0 is the top layer), writable when
    it has an upper layer."""
