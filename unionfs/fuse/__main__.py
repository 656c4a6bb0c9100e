"""``python -m unionfs.fuse mount MOUNTPOINT CONFIG_FD READY_FD``: the background
mount daemon, as `unionfs.fuse.daemon.mount` starts it (a fresh interpreter
that imports only what serving needs). Not a command for people."""

import sys

from unionfs.fuse.daemon import run_spawned

if __name__ == "__main__":
    sys.exit(run_spawned(sys.argv[1:]))
