"""HTTP to one registry (the OCI distribution API) on httpx.

Invariants:

* Auth: a request is sent as it is; a 401 answers with a challenge. ``Basic``
  is answered with the credentials (`unionfs.image.registry.auth`); ``Bearer``
  with a token fetched from its realm for every scope this client needs
  (anonymously when there are no credentials), cached, and fetched again once
  when the registry refuses it (expired). Credentials never appear in messages.
* TLS is verified (system CAs, plus ``*.crt`` of the certs dir: ``--cert-dir``,
  else ``/etc/containers/certs.d/HOST`` and ``/etc/docker/certs.d/HOST``; a
  ``*.cert``/``*.key`` pair there is the client certificate). With
  ``tls_verify=False`` certificates are not checked and a registry that does not
  speak TLS is reached over plain HTTP, as podman does.
* 429 and 5xx answers and broken connections are retried with exponential
  backoff (``Retry-After`` honoured up to a cap); other errors are one line.
* Blob downloads are streamed: `unionfs.image.registry.blobs` verifies them
  against their digest and size, and resumes them with ``Range`` requests.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlencode, urljoin

import httpx

from unionfs.errors import UnionfsError
from unionfs.image.registry.auth import Credentials, parse_challenge
from unionfs.image.registry.manifests import ACCEPT

log = logging.getLogger(__name__)

RETRIES = 6
_BACKOFF_START = 0.25
_BACKOFF_CAP = 8.0
_CERT_DIRS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))


class RegistryError(UnionfsError):
    """An answer of the registry that ends the operation."""


def ssl_context(host: str, cert_dir: Path | None) -> ssl.SSLContext:
    """System CAs plus the CA and client certificate files of the certs dir."""
    ctx = ssl.create_default_context()
    dirs = [cert_dir] if cert_dir is not None else [d / host for d in _CERT_DIRS]
    for d in dirs:
        if not d.is_dir():
            if cert_dir is not None:
                raise UnionfsError(f"--cert-dir {d}: not a directory")
            continue
        for crt in sorted(d.glob("*.crt")):
            try:
                ctx.load_verify_locations(cafile=str(crt))
            except (ssl.SSLError, OSError) as e:
                raise UnionfsError(f"{crt}: not a CA certificate: {e}") from None
        for cert in sorted(d.glob("*.cert")):
            key = cert.with_suffix(".key")
            if not key.exists():
                raise UnionfsError(f"{cert}: no {key.name} beside it")
            ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _error_text(response: httpx.Response) -> str:
    """The registry's error codes and messages, else the HTTP status."""
    try:
        doc = response.json()
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errors, list) and errors:
            parts = []
            for e in errors[:3]:
                code = str(e.get("code", "")).lower().replace("_", " ")
                message = str(e.get("message", "")).strip()
                parts.append(message if message.lower() == code else f"{code}: {message}")
            return "; ".join(p.strip(": ") for p in parts)
    except (ValueError, AttributeError):
        pass
    return f"HTTP {response.status_code} {response.reason_phrase}"


class RegistryClient:
    """One registry host; thread-safe (blobs are fetched from several threads)."""

    def __init__(
        self,
        host: str,
        *,
        credentials: Credentials | None = None,
        tls_verify: bool = True,
        cert_dir: Path | None = None,
        timeout: float = 60.0,
        retries: int = RETRIES,
    ) -> None:
        self.host = host
        self.credentials = credentials
        self.tls_verify = tls_verify
        self.retries = retries
        verify: ssl.SSLContext | bool = ssl_context(host, cert_dir) if tls_verify else False
        self._http = httpx.Client(
            verify=verify,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            follow_redirects=True,
            headers={"User-Agent": "unionfs"},
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
        )
        self._base: str | None = None
        self._lock = threading.Lock()
        self._scopes: dict[str, None] = {}
        self._token: str | None = None
        self._basic = False  # the registry asked for basic auth

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connecting ------------------------------------------------------------------

    def need_scope(self, repository: str, actions: str) -> None:
        """Ask for ``repository:REPO:ACTIONS`` in the next token."""
        with self._lock:
            self._scopes[f"repository:{repository}:{actions}"] = None

    @property
    def base(self) -> str:
        """``https://HOST`` (or ``http://HOST`` when TLS is off and the registry is plain)."""
        with self._lock:
            if self._base is None:
                self._base = self._probe()
            return self._base

    def _probe(self) -> str:
        https = f"https://{self.host}"
        try:
            self._http.get(f"{https}/v2/")
            return https
        except httpx.ConnectError as e:
            plain = f"http://{self.host}"
            if not self.tls_verify:
                try:
                    self._http.get(f"{plain}/v2/")
                    return plain
                except httpx.TransportError:
                    pass
            if "CERTIFICATE_VERIFY_FAILED" in str(e):
                raise RegistryError(
                    f"{self.host}: its TLS certificate is not trusted ({_ssl_reason(e)}): "
                    "give its CA with --cert-dir, or --tls-verify=false"
                ) from None
            if "WRONG_VERSION_NUMBER" in str(e) or "record layer failure" in str(e):
                raise RegistryError(
                    f"{self.host} does not speak TLS: use --tls-verify=false for a plain-HTTP "
                    "registry"
                ) from None
            raise RegistryError(f"cannot reach registry {self.host}: {_reason(e)}") from None
        except httpx.TransportError as e:
            raise RegistryError(f"cannot reach registry {self.host}: {_reason(e)}") from None

    def url(self, path: str, **query: str) -> str:
        url = f"{self.base}/v2/{path}"
        return f"{url}?{urlencode(query)}" if query else url

    def absolute(self, location: str) -> str:
        return urljoin(self.base + "/", location)

    # -- auth ------------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        with self._lock:
            if self._token is not None:
                return {"Authorization": f"Bearer {self._token}"}
        if self._basic and self.credentials is not None:
            return {"Authorization": _basic(self.credentials)}
        return {}

    def _answer(self, response: httpx.Response, sent: str) -> None:
        """Act on a 401 to a request sent with the Authorization `sent` ("" if none):
        get a token, or use basic credentials; else raise."""
        refused_token = sent.removeprefix("Bearer ") if sent.startswith("Bearer ") else None
        header = response.headers.get("WWW-Authenticate", "")
        challenge = parse_challenge(header) if header else None
        who = (
            f" as {self.credentials.username}"
            + (f" (from {self.credentials.source})" if self.credentials.source else "")
            if self.credentials
            else ""
        )
        if challenge is not None and challenge.scheme == "bearer":
            asked = challenge.params.get("scope")
            with self._lock:
                if self._token is not None and self._token != refused_token:
                    return  # another thread has fetched a new token already
                new_scope = bool(asked) and asked not in self._scopes
                if asked:
                    self._scopes[asked] = None
                scopes = list(self._scopes)
            if refused_token is not None and self.credentials is None and not new_scope:
                raise RegistryError(
                    f"{self.host}: access denied anonymously: log in with `unionfs login "
                    f"{self.host}`"
                )
            token = self._fetch_token(challenge.params, scopes)
            with self._lock:
                if self._token == token and refused_token == token:
                    raise RegistryError(f"{self.host}: access denied{who}")
                self._token = token
            return
        if challenge is not None and challenge.scheme == "basic":
            if self.credentials is None:
                raise RegistryError(f"{self.host} requires a login: `unionfs login {self.host}`")
            if sent.startswith("Basic "):
                raise RegistryError(f"{self.host}: authentication failed{who}")
            self._basic = True
            return
        raise RegistryError(f"{self.host}: unauthorized: {_error_text(response)}")

    def _fetch_token(self, params: dict[str, str], scopes: list[str]) -> str:
        realm = params.get("realm")
        if not realm:
            raise RegistryError(f"{self.host}: a bearer challenge without a realm")
        query: list[tuple[str, str | int | float | bool | None]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        for scope in scopes or ([params["scope"]] if params.get("scope") else []):
            query.append(("scope", scope))
        headers = {"Authorization": _basic(self.credentials)} if self.credentials else {}
        try:
            r = self._retrying(
                lambda: self._http.get(realm, params=query, headers=headers), f"token from {realm}"
            )
        except httpx.TransportError as e:
            raise RegistryError(
                f"{self.host}: cannot reach its token server: {_reason(e)}"
            ) from None
        if r.status_code in (401, 403):
            raise RegistryError(
                f"{self.host}: the token server refused "
                + (
                    f"the credentials of {self.credentials.username}"
                    if self.credentials
                    else "anonymous access: `unionfs login` first"
                )
            )
        if r.status_code != 200:
            raise RegistryError(f"{self.host}: token server: {_error_text(r)}")
        try:
            doc = r.json()
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{self.host}: the token server sent no token")
        return token

    # -- requests --------------------------------------------------------------------

    def _retrying(self, send: Callable[[], httpx.Response], what: str) -> httpx.Response:
        """Send, retrying 429, 5xx and broken connections with backoff."""
        delay = _BACKOFF_START
        for attempt in range(self.retries + 1):
            try:
                r = send()
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as e:
                if attempt == self.retries:
                    raise
                log.info("%s: %s; retrying in %.2fs", what, _reason(e), delay)
            else:
                if r.status_code != 429 and r.status_code < 500:
                    return r
                if attempt == self.retries:
                    return r
                retry_after = r.headers.get("Retry-After", "")
                if retry_after.isdigit():
                    delay = min(float(retry_after), _BACKOFF_CAP)
                log.info("%s: HTTP %d; retrying in %.2fs", what, r.status_code, delay)
            time.sleep(delay)
            delay = min(delay * 2, _BACKOFF_CAP)
        raise AssertionError("unreachable")

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """One request with auth and retries; the response whatever its status but 401."""
        for _ in range(3):
            auth = self._auth_headers()
            try:
                r = self._retrying(
                    lambda a=auth: self._http.request(  # type: ignore[misc]
                        method, url, headers={**(headers or {}), **a}, content=content
                    ),
                    what,
                )
            except httpx.TransportError as e:
                raise RegistryError(f"{self.host}: {what}: {_reason(e)}") from None
            if r.status_code != 401:
                return r
            self._answer(r, auth.get("Authorization", ""))
        raise RegistryError(f"{self.host}: {what}: still unauthorized after logging in")

    @staticmethod
    def check(r: httpx.Response, what: str, *ok: int) -> httpx.Response:
        if r.status_code not in (ok or (200,)):
            raise RegistryError(f"{what}: {_error_text(r)}")
        return r

    # -- manifests -------------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str | None, str]:
        """(bytes, Content-Type, digest) of a manifest or index, digest verified."""
        what = (
            f"{self.host}/{repository}:{reference}"
            if not reference.startswith("sha256:")
            else f"{self.host}/{repository}@{reference}"
        )
        r = self.request(
            "GET",
            self.url(f"{repository}/manifests/{reference}"),
            what=f"manifest of {what}",
            headers={"Accept": ACCEPT},
        )
        if r.status_code == 404:
            raise RegistryError(f"{what}: not in the registry ({_error_text(r)})")
        self.check(r, what)
        body = r.content
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        expected = reference if reference.startswith("sha256:") else None
        expected = expected or r.headers.get("Docker-Content-Digest")
        if expected and expected.startswith("sha256:") and expected != digest:
            raise RegistryError(f"{what}: the manifest hashes to {digest}, not {expected}")
        return body, r.headers.get("Content-Type"), digest

    def put_manifest(self, repository: str, tag: str, body: bytes, media_type: str) -> str:
        what = f"{self.host}/{repository}:{tag}"
        r = self.request(
            "PUT",
            self.url(f"{repository}/manifests/{tag}"),
            what=f"push {what}",
            headers={"Content-Type": media_type},
            content=body,
        )
        self.check(r, f"push of manifest {what}", 201, 200, 202)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        sent = r.headers.get("Docker-Content-Digest")
        if sent and sent != digest:
            raise RegistryError(f"{what}: the registry stored the manifest as {sent}, not {digest}")
        return digest

    # -- blobs -----------------------------------------------------------------------

    def has_blob(self, repository: str, digest: str) -> bool:
        r = self.request("HEAD", self.url(f"{repository}/blobs/{digest}"), what=f"blob {digest}")
        if r.status_code == 404:
            return False
        self.check(r, f"{self.host}/{repository}: blob {digest}", 200)
        return True

    def blob_bytes(self, repository: str, digest: str, limit: int = 16 << 20) -> bytes:
        """A small blob (a config), verified."""
        r = self.request("GET", self.url(f"{repository}/blobs/{digest}"), what=f"blob {digest}")
        self.check(r, f"{self.host}/{repository}: blob {digest}")
        data = r.content[: limit + 1]
        if len(data) > limit:
            raise RegistryError(f"{self.host}/{repository}: blob {digest} is too big for a config")
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise RegistryError(f"{self.host}/{repository}: blob {digest} hashes to {actual}")
        return data

    def get_blob_stream(
        self, repository: str, digest: str, headers: dict[str, str], what: str
    ) -> httpx.Response:
        """A streamed GET of a blob after auth and retries of the status; the caller
        closes it. (`unionfs.image.registry.blobs` reads, resumes and verifies it.)"""
        url = self.url(f"{repository}/blobs/{digest}")
        for _ in range(3):
            auth = self._auth_headers()
            request = self._http.build_request("GET", url, headers={**headers, **auth})
            r = self._retrying(lambda req=request: self._http.send(req, stream=True), what)  # type: ignore[misc]
            if r.status_code != 401:
                return r
            r.close()
            self._answer(r, auth.get("Authorization", ""))
        raise RegistryError(f"{what}: still unauthorized")

    def upload_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        open_blob: Callable[[], contextlib.AbstractContextManager[BinaryIO]],
        *,
        mount_from: str | None = None,
        chunk_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> str:
        """Put a blob unless the registry has it: "exists", "mounted" or "uploaded"."""
        what = f"{self.host}/{repository}: blob {digest[:19]}"
        if self.has_blob(repository, digest):
            return "exists"
        query = {"mount": digest, "from": mount_from} if mount_from else {}
        r = self.request(
            "POST", self.url(f"{repository}/blobs/uploads/", **query), what=f"{what}: start upload"
        )
        if r.status_code == 201 and mount_from:
            return "mounted"
        self.check(r, f"{what}: start upload", 202)
        location = self.absolute(r.headers["Location"])
        with open_blob() as f:
            if chunk_size is None:
                data = f.read()
                r = self.request(
                    "PUT",
                    _with_query(location, digest=digest),
                    what=what,
                    headers={"Content-Type": "application/octet-stream"},
                    content=data,
                )
                self.check(r, f"{what}: upload", 201)
                if progress is not None:
                    progress(len(data))
                return "uploaded"
            offset = 0
            while chunk := f.read(chunk_size):
                r = self.request(
                    "PATCH",
                    location,
                    what=what,
                    content=chunk,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                    },
                )
                self.check(r, f"{what}: upload chunk at {offset}", 202)
                location = self.absolute(r.headers["Location"])
                offset += len(chunk)
                if progress is not None:
                    progress(offset)
        r = self.request("PUT", _with_query(location, digest=digest), what=what)
        self.check(r, f"{what}: finish upload", 201)
        return "uploaded"


def _with_query(url: str, **query: str) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(query)


def _basic(creds: Credentials) -> str:
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    return f"Basic {token}"


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:200]


def _ssl_reason(e: Exception) -> str:
    text = str(e)
    start = text.find("certificate verify failed")
    return text[start:].split(")", maxsplit=1)[0].strip() if start >= 0 else _reason(e)
