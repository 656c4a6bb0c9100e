"""Leases: what a command in flight will use, so that garbage collection keeps it.

An import or a commit puts layers and blobs into the store before the image
record that uses them exists: between the two, nothing in the records says
they are used, and a concurrent ``rmi`` or ``rm`` (which collect garbage)
would delete them. So such a command holds a lease for as long as it runs: a
staging dir ``tmp/lease-<random>/`` (owned like every staging dir: a file in
it stays flock()ed by its owner, and `unionfs.store.base` removes it once its
owner is gone) whose ``lease.json`` lists the diff_ids and blob digests the
command has taken.

Invariants:

- A name is added to the lease while holding the store lock, *before* the
  command looks for the layer or blob in the store or renames it into place,
  and garbage collection reads every lease under that same lock
  (`leased`). So whatever the command found or put in place stays until the
  lease ends: the layer or blob either was collected before the lease named it
  (and the command sees it missing and puts it back) or is kept.
- A lease ends after the image record that uses its names is written (or the
  command failed); from then on the records alone say what is used. A lease
  whose owner was killed keeps its names until the next command that takes the
  store lock removes it; that only delays collecting them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from unionfs.store.base import StoreBase
from unionfs.store.files import write_json_atomic

LEASE_PREFIX = "lease-"
_LEASE_FILE = "lease.json"


class Lease:
    """The names one command in flight uses. `add` only while holding the store lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.layers: set[str] = set()
        self.blobs: set[str] = set()

    def add(self, *, layers: Iterable[str] = (), blobs: Iterable[str | None] = ()) -> None:
        """Name more layers (diff_ids) and blobs (digests); the caller holds the store lock."""
        new_layers = set(layers) - self.layers
        new_blobs = {b for b in blobs if b is not None} - self.blobs
        if not new_layers and not new_blobs:
            return
        self.layers |= new_layers
        self.blobs |= new_blobs
        write_json_atomic(
            self.path / _LEASE_FILE,
            {"layers": sorted(self.layers), "blobs": sorted(self.blobs)},
        )


@contextlib.contextmanager
def holding_lease(store: StoreBase) -> Iterator[Lease]:
    """A lease for the block's length (its dir is removed at the end, or after a kill)."""
    with store.staging(LEASE_PREFIX.rstrip("-")) as path:
        yield Lease(path)


def leased(tmp: Path) -> tuple[set[str], set[str]]:
    """The diff_ids and blob digests named by every lease in `tmp` (under the store lock)."""
    layers: set[str] = set()
    blobs: set[str] = set()
    if not tmp.is_dir():
        return layers, blobs
    for entry in tmp.glob(LEASE_PREFIX + "*"):
        # a lease that ends meanwhile is removed without the store lock: its image
        # record is written by then, or its command failed
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            with open(entry / _LEASE_FILE, encoding="utf-8") as f:
                data = json.load(f)
            layers.update(str(d) for d in data.get("layers", ()))
            blobs.update(str(d) for d in data.get("blobs", ()))
    return layers, blobs
