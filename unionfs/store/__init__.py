"""The embedded image and container store: blobs, layers, images, containers.

`unionfs.store.store.Store` is the store; its docstring shows the layout on disk
and which module holds which part. `export` writes a stored image out as an OCI
layout, an oci-archive or a docker-archive.
"""
