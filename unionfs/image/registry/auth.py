"""Registry credentials: the files podman and docker keep, and auth challenges.

Credentials are read, in podman's order, from ``--authfile`` or
``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
``~/.config/containers/auth.json``, ``~/.docker/config.json``; the first file
with an entry for the registry wins. ``unionfs login`` writes (and ``logout``
removes) an entry of the first of those podman writes: ``--authfile``,
``$REGISTRY_AUTH_FILE``, else ``$XDG_RUNTIME_DIR/containers/auth.json`` (else
``~/.config/containers/auth.json``). An entry is ``{"auths": {HOST: {"auth":
base64(USER:PASSWORD)}}}``; other keys of the file are kept as they are.

Invariant: a password never appears in a message, a log line or a repr.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unionfs.errors import UnionfsError

log = logging.getLogger(__name__)

_DOCKER_HUB_KEYS = ("docker.io", "index.docker.io", "https://index.docker.io/v1/")
_PARAM_RE = re.compile(r'([A-Za-z_]+)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: Path | None = None
    """The file they came from (for messages), None when given on the command line."""


@dataclass(frozen=True)
class Challenge:
    """A ``WWW-Authenticate`` header: the scheme (lower-case) and its parameters."""

    scheme: str
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge:
    """``Bearer realm="https://auth",service="reg",scope="repository:a:pull"``."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _PARAM_RE.finditer(rest)
    }
    return Challenge(scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()})


def read_files(authfile: Path | None = None) -> list[Path]:
    """The files credentials are looked up in, in order (existing or not)."""
    out: list[Path] = []
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if authfile is not None:
        out.append(authfile)
    elif env:
        out.append(Path(env))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        out.append(Path(runtime) / "containers" / "auth.json")
    home = Path.home()
    out.append(home / ".config" / "containers" / "auth.json")
    out.append(home / ".docker" / "config.json")
    return out


def write_file(authfile: Path | None = None) -> Path:
    """The file ``login`` and ``logout`` change."""
    if authfile is not None:
        return authfile
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return Path(env)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "containers" / "auth.json"
    return Path.home() / ".config" / "containers" / "auth.json"


def _keys(host: str) -> tuple[str, ...]:
    return _DOCKER_HUB_KEYS if host == "docker.io" else (host, f"https://{host}", f"http://{host}")


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UnionfsError(f"{path}: cannot read the credentials file: {e}") from None
    if not isinstance(doc, dict):
        raise UnionfsError(f"{path}: a credentials file is a JSON object")
    return doc


def _entry(doc: dict[str, Any], host: str) -> dict[str, Any] | None:
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return None
    for key in _keys(host):
        entry = auths.get(key)
        if isinstance(entry, dict):
            return entry
    # "host/path" keys (podman allows namespaced entries): the host's own wins above.
    for key, entry in auths.items():
        if isinstance(key, str) and key.split("/", 1)[0] == host and isinstance(entry, dict):
            return entry
    return None


def lookup(host: str, authfile: Path | None = None) -> Credentials | None:
    """The credentials for `host` from the first file that has them."""
    for path in read_files(authfile):
        entry = _entry(_load(path), host)
        if entry is None:
            continue
        token = entry.get("auth")
        if isinstance(token, str) and token:
            try:
                user, sep, password = base64.b64decode(token).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise UnionfsError(f"{path}: the entry for {host} is not base64") from None
            if not sep:
                raise UnionfsError(f"{path}: the entry for {host} is not USER:PASSWORD")
            return Credentials(user, password, path)
        if "username" in entry and "password" in entry:
            return Credentials(str(entry["username"]), str(entry["password"]), path)
        log.debug("%s: the entry for %s has no auth (credential helpers are not used)", path, host)
    return None


def _write_atomic(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".auth-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent="\t")
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def store(host: str, creds: Credentials, authfile: Path | None = None) -> Path:
    """Write the entry for `host`; the file stays readable by its owner only."""
    path = write_file(authfile)
    doc = _load(path)
    auths = doc.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise UnionfsError(f"{path}: its auths is not an object")
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    auths[host] = {"auth": token}
    _write_atomic(path, doc)
    return path


def remove(host: str, authfile: Path | None = None) -> Path | None:
    """Remove the entry for `host`; the file it was in, None if there was none."""
    path = write_file(authfile)
    doc = _load(path)
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return None
    found = [k for k in _keys(host) if k in auths]
    if not found:
        return None
    for k in found:
        del auths[k]
    _write_atomic(path, doc)
    return path
