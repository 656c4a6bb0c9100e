"""The image and container store: an embedded directory, no server.

Layout under the store root (containerd's vocabulary: content store, unpacked
layers as snapshots, image records, containers)::

    store.json                   format version
    lock                         flock()ed by every command that changes the store
    blobs/sha256/<hex>           content-addressed blobs: manifests, configs, layer tars
    layers/<hex>/diff/           a layer unpacked once, keyed by its diff_id
    layers/<hex>/layer.json      its diff_id, size, and how it was unpacked
    layers/<hex>.lock            held while that layer is being unpacked
    images/<hex>.json            an image record, keyed by its ID (config digest)
    tags.json                    NAME:TAG -> image ID
    containers/<id>/             container.json, upper/, work/
    tmp/                         staging: everything is built here, then renamed into place
    tmp/lease-<random>/          what a command in flight will use (kept from collection)

Every change is built in ``tmp/`` and renamed into place while holding the
store lock, so a reader sees an object whole or not at all (`unionfs.store.base`).
What a layer, image or container uses is never counted in a file: it is
computed from the records, so there are no counts to get wrong.

`Store` is assembled from one mixin per concern, each in its own module over
`unionfs.store.base.StoreBase` (the root, its paths, the lock, staging):

- `unionfs.store.content`: blobs by digest
- `unionfs.store.layers`: unpacking layers, layer info, the lower dirs of a mount
- `unionfs.store.images`: image records, tags, import, resolving names, ``rmi``
- `unionfs.store.containers`: creating, finding and removing containers
- `unionfs.store.commit`: a container's changes as a new image
- `unionfs.store.gc`: deleting what nothing uses
- `unionfs.store.leases`: what commands in flight use, which collection keeps

The records themselves are in `unionfs.store.records`, the file helpers in
`unionfs.store.files`, and how store mounts show in the mount table in
`unionfs.store.mounted`.
"""

from unionfs.store.base import StoreBase
from unionfs.store.commit import CommitMixin
from unionfs.store.containers import ContainersMixin
from unionfs.store.content import ContentMixin
from unionfs.store.gc import GcMixin
from unionfs.store.images import ImagesMixin
from unionfs.store.layers import LayersMixin


class Store(
    ImagesMixin,
    ContainersMixin,
    CommitMixin,
    LayersMixin,
    ContentMixin,
    GcMixin,
    StoreBase,
):
    """An opened store directory. Reading commands work on a store that does not
    exist yet (it is empty); the first change creates it."""
