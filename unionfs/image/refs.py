"""Image references as docker writes them: ``NAME[:TAG]``, ``NAME@DIGEST``.

A name is one or more ``/``-separated path components of lower-case letters,
digits and the separators ``.``, ``_``, ``__``, ``-``; the first component may
instead be a registry host with an optional port (``localhost:5000/app``). The
tag defaults to ``latest``. Names are kept as written: no ``docker.io/library/``
is added, as nothing here talks to a registry.
"""

import re
from dataclasses import dataclass

from unionfs.errors import UnionfsError

DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9-]+)*(?::[0-9]+)?)"
_NAME_RE = re.compile(rf"(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
NAME_MAX = 255


@dataclass(frozen=True)
class Reference:
    """A repository name and a tag: one tag of an image."""

    name: str
    tag: str = DEFAULT_TAG

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"


def split_reference(text: str) -> tuple[str, str | None, str | None]:
    """``NAME[:TAG][@DIGEST]`` -> (name, tag or None, digest or None), unchecked."""
    name, _, digest = text.partition("@")
    tag = None
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest or None


def is_valid_name(name: str) -> bool:
    return len(name) <= NAME_MAX and _NAME_RE.fullmatch(name) is not None


def parse_reference(text: str) -> Reference:
    """A ``NAME[:TAG]`` given on the command line, or a clear error."""
    name, tag, digest = split_reference(text)
    if digest is not None:
        raise UnionfsError(f"invalid reference {text!r}: a digest cannot be a new name")
    if not is_valid_name(name):
        raise UnionfsError(
            f"invalid reference {text!r}: a name is lower-case letters, digits and "
            "the separators . _ - / (optionally after a registry host[:port]/)"
        )
    if tag is not None and not _TAG_RE.fullmatch(tag):
        raise UnionfsError(f"invalid tag in {text!r}: up to 128 of A-Z a-z 0-9 _ . -")
    return Reference(name, tag or DEFAULT_TAG)


def is_digest(text: str) -> bool:
    return _DIGEST_RE.fullmatch(text) is not None


def source_reference(text: str) -> Reference | None:
    """A name found inside an archive (RepoTags, ref.name annotations), or None
    when it is not a full reference (a bare tag such as ``latest``, as skopeo
    writes into OCI layouts, names no repository)."""
    name, tag, digest = split_reference(text)
    if digest is not None or not is_valid_name(name) or ("/" not in name and tag is None):
        # A bare word with no tag is as likely a tag ("latest", "v1") as a name.
        return None
    if tag is not None and not _TAG_RE.fullmatch(tag):
        return None
    return Reference(name, tag or DEFAULT_TAG)
