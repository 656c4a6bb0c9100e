"""Image formats: what comes in as archives and layer tars, and what goes out.

- `refs`: image names, `NAME[:TAG]`.
- `sources`: reading docker save archives, OCI layouts and oci-archives.
- `unpack`: unpacking a layer tar safely into a directory.
- `layerwriter`: an upper layer written as an OCI layer tar.
- `export`: images written as OCI layouts, oci-archives and docker-archives.
"""
