"""The mount process: a `unionfs.fs.vfs.UnionFS` served through pyfuse3.

- `options`: mount options, in the `--lower` and the `-o lowerdir=` forms.
- `ops`: the pyfuse3 adapter (`pyfuse3.Operations`): it only translates.
- `daemon`: mounting, serving in the background, unmounting.
- `mounttab`: reading the mount table for unionfs mounts (no pyfuse3).
- `control`: the daemon's control socket (events, stats).
- `runstate`: what a live mount publishes for the other commands.
"""
