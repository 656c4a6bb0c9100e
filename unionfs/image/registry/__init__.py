"""A client of the OCI distribution API: references, credentials, pulls and pushes.

Image-level only (no store): `reference` parses ``[docker://]HOST[:PORT]/REPO[:TAG|@DIGEST]``
with docker's rules, `auth` reads and writes the credential files podman and
docker keep, `client` speaks HTTP to one registry (auth challenges, TLS, retries,
uploads and cross-repository mounts), `blobs` reads a blob as it downloads
(resumed, verified) and `manifests` chooses the image of an index for a platform.
"""
