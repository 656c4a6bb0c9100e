"""Manifests as a registry serves them: media types, and choosing an index's image.

An image index (OCI) or manifest list (docker) names one image manifest per
platform; `choose_platform` picks the one for ``OS/ARCH[/VARIANT]`` (the host's
by default), as podman does: an exact variant match first, then an entry with no
variant. Attestation manifests (BuildKit's) are never chosen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from unionfs.errors import UnionfsError
from unionfs.image.sources import (
    ANNOTATION_REFERENCE_TYPE,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    host_architecture,
)

ACCEPT = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST))
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def parse_platform(text: str | None) -> Platform:
    """``OS/ARCH[/VARIANT]``; None is the host's (linux and its architecture)."""
    if text is None:
        return Platform("linux", host_architecture())
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise UnionfsError(f"invalid platform {text!r}: OS/ARCH[/VARIANT] expected")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def media_type_of(body: bytes, header: str | None) -> str:
    """The document's own mediaType, else the Content-Type the registry sent."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise UnionfsError("the registry sent a manifest that is not JSON") from None
    declared = doc.get("mediaType") if isinstance(doc, dict) else None
    kind = declared or (header or "").split(";")[0].strip()
    if kind in DOCKER_SCHEMA1:
        raise UnionfsError("the registry has this image as docker schema 1 only, which is not read")
    if kind not in INDEX_TYPES | MANIFEST_TYPES and isinstance(doc, dict):
        kind = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    return kind


def choose_platform(index: dict[str, Any], want: Platform) -> dict[str, Any]:
    """The descriptor of `index` for the platform `want`, or one clear error."""
    entries = [
        e
        for e in index.get("manifests") or []
        if isinstance(e, dict)
        and ANNOTATION_REFERENCE_TYPE not in (e.get("annotations") or {})
        and e.get("mediaType", OCI_MANIFEST) in MANIFEST_TYPES | INDEX_TYPES
    ]

    def plat(e: dict[str, Any]) -> dict[str, Any]:
        p = e.get("platform")
        return p if isinstance(p, dict) else {}

    same = [
        e
        for e in entries
        if plat(e).get("os") == want.os and plat(e).get("architecture") == want.architecture
    ]
    if want.variant is not None:
        exact = [e for e in same if plat(e).get("variant") == want.variant]
        same = exact or [e for e in same if not plat(e).get("variant")]
    else:
        # Without a variant asked for: arm64's v8 is the default, as podman's.
        plain = [e for e in same if plat(e).get("variant") in (None, "", "v8")]
        same = plain or same
    if not same:
        have = ", ".join(
            dict.fromkeys(
                "/".join(
                    str(x)
                    for x in (
                        plat(e).get("os"),
                        plat(e).get("architecture"),
                        plat(e).get("variant"),
                    )
                    if x
                )
                for e in entries
            )
        )
        raise UnionfsError(f"no image for {want} in the index; it has: {have or 'none'}")
    return same[0]
