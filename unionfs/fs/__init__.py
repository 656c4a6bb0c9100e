"""The filesystem core: the merged view of a layer stack and its writable upper layer.

No FUSE here: every rule of the union (lookup, whiteouts, opaque directories,
copy-up, inode numbers) lives in these modules, which the unit tests call
directly, the FUSE adapter (`unionfs.fuse`) translates, and the inspection
commands (`unionfs.inspect`) reuse.

- `merge`: the merge rules, without I/O.
- `whiteout`: the whiteout and opaque-directory formats.
- `layer`: one read-only layer directory and the system calls inside it.
- `inodes`: the inode table (stable inode numbers, lookup counts).
- `search`: one name looked up through the layers, following redirects.
- `upper`: the writable upper layer: whiteouts written, copy-up.
- `events`: the event log and counters of what the filesystem does.
- `owners`: owner mapping (fuse-overlayfs's uidmapping/gidmapping and squash).
- `overridestat`: owners and modes a rootless layer records in
  ``user.containers.override_stat``, and the stat a mount shows for them.
- `core`, `listing`, `copyup`, `writes`, `xattrs`: the parts of `UnionFS`, one per
  concern (reading through the layers, directory listings, copy-up, namespace
  changes, extended attributes).
- `vfs`: `UnionFS`, the merged filesystem's operations, assembled from those parts.
"""
