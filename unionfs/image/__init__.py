"""Image formats: what comes in as archives and layer tars, and what goes out.

- `refs`: image names, `NAME[:TAG]`.
- `sourcefiles`: the files of an image source (a directory, or a tar read in place).
- `sources`: reading docker save archives, OCI layouts and oci-archives.
- `decompress`: a layer blob as a hashed, decompressed byte stream.
- `extract`: a layer tar's entries created safely in a directory.
- `unpack`: unpacking a layer tar into a directory (digests checked).
- `layerwriter`: an upper layer written as an OCI layer tar.
- `tarwriter`: the deterministic tar writer of exports, and blob copies.

Nothing here knows the store: `unionfs.store.export` writes a stored image out
with these formats.
"""
