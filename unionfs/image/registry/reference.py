"""Registry references with docker's rules.

``[docker://][HOST[:PORT]/]REPO[:TAG][@DIGEST]``: the first path component is a
registry host when it holds a ``.`` or a ``:`` or is ``localhost``; otherwise
the reference is docker.io's (``alpine`` is ``docker.io/library/alpine``). The
tag defaults to ``latest``. The name an image is given in the store is the
reference as written, host included (``127.0.0.1:5000/demo``), as podman names
a pulled image; docker.io's names get the ``docker.io/`` (and ``library/``)
podman gives them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from unionfs.errors import UnionfsError
from unionfs.image.refs import DEFAULT_TAG, Reference, is_digest, is_valid_name, split_reference

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
TRANSPORT = "docker://"

_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST_RE = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$"
)


@dataclass(frozen=True)
class RegistryRef:
    """One image in a registry: by tag, by digest, or both (the digest wins)."""

    host: str
    """As written (``127.0.0.1:5000``), ``docker.io`` for docker's names."""
    repository: str
    """The path in the registry (``demo``, ``library/alpine``)."""
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        """The host the API is reached at (docker.io's is registry-1.docker.io)."""
        return DOCKER_HUB_API if self.host == DOCKER_HUB else self.host

    @property
    def name(self) -> str:
        """``HOST/REPO`` as podman names a pulled image."""
        return f"{self.host}/{self.repository}"

    @property
    def reference(self) -> str:
        """What the manifest is fetched by: the digest if given, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def store_reference(self) -> Reference | None:
        """The NAME:TAG the store gives the image (None when pulled by digest only)."""
        if self.tag is None and self.digest is not None:
            return None
        return Reference(self.name, self.tag or DEFAULT_TAG)

    def with_digest(self, digest: str) -> RegistryRef:
        return RegistryRef(self.host, self.repository, None, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_registry_reference(text: str, *, for_push: bool = False) -> RegistryRef:
    """A reference given on the command line, or one clear error line."""
    body = text.removeprefix(TRANSPORT)
    if "://" in body:
        scheme = body.split("://", 1)[0]
        raise UnionfsError(f"invalid reference {text!r}: transport {scheme}:// (docker:// only)")
    name, tag, digest = split_reference(body)
    if digest is not None and not is_digest(digest):
        raise UnionfsError(f"invalid digest in {text!r}: sha256:<64 hex digits> expected")
    if digest is not None and for_push:
        raise UnionfsError(f"invalid reference {text!r}: push to a tag, not a digest")
    if tag is not None and not _TAG_RE.fullmatch(tag):
        raise UnionfsError(f"invalid tag in {text!r}: up to 128 of A-Z a-z 0-9 _ . -")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        host, repository = first, rest
        if not _HOST_RE.fullmatch(host):
            raise UnionfsError(f"invalid registry host {host!r} in {text!r}")
    else:
        host, repository = DOCKER_HUB, name if slash else f"library/{name}"
    if host == "index.docker.io":
        host = DOCKER_HUB
    if not repository or not is_valid_name(repository):
        raise UnionfsError(
            f"invalid reference {text!r}: a repository is lower-case letters, digits and "
            "the separators . _ - /"
        )
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return RegistryRef(host, repository, tag, digest)
