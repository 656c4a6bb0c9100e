"""The mount process: a `unionfs.fs.vfs.UnionFS` served through pyfuse3.

- `options`: mount options, in the `--lower` and the `-o lowerdir=` forms.
- `ops`: the pyfuse3 adapter (`pyfuse3.Operations`): it only translates.
- `entryino`: an entry's reported `st_ino` apart from its node id.
- `daemon`: mounting, serving in the background (`python -m unionfs.fuse`,
  a fresh interpreter), unmounting.
- `mounttab`: reading the mount table for unionfs mounts (no pyfuse3).
- `control`: the daemon's control socket (events, stats).
- `runstate`: what a live mount publishes for the other commands.
"""
