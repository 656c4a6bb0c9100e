"""A real registry for the tests: Debian's ``docker-registry`` (distribution) on
127.0.0.1, plain HTTP or TLS with a CA made here (openssl), open, with htpasswd
basic auth, or with the bearer-token flow against a token server run here
(JWTs signed by openssl, checked by the registry against the test's CA)."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REGISTRY = shutil.which("docker-registry")
requires_registry = pytest.mark.skipif(
    REGISTRY is None or shutil.which("openssl") is None or shutil.which("htpasswd") is None,
    reason="docker-registry, openssl or htpasswd (apache2-utils) is not installed",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Certs:
    """A CA and a certificate for 127.0.0.1 signed by it."""

    dir: Path
    ca: Path
    cert: Path
    key: Path


def make_certs(d: Path) -> Certs:
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        d / n for n in ("ca.key", "ca.crt", "srv.key", "srv.csr", "srv.pem")
    )

    def run(*a: str | Path) -> None:
        subprocess.run(a, check=True, capture_output=True)

    run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        ca_key,
        "-out",
        ca,
        "-days",
        "2",
        "-subj",
        "/CN=unionfs test CA",
    )
    run(
        "openssl",
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key,
        "-out",
        csr,
        "-subj",
        "/CN=127.0.0.1",
    )
    ext = d / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(
        "openssl",
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        "2",
        "-extfile",
        ext,
    )
    return Certs(d, ca, cert, key)


class TokenServer:
    """The token endpoint of the bearer flow: issues a JWT for the scopes asked,
    to `user`:`password` only (or to anyone when `anonymous`)."""

    def __init__(self, d: Path, user: str, password: str, *, anonymous: bool = False) -> None:
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        self.key = d / "token.key"
        self.cert = d / "token.crt"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                self.key,
                "-out",
                self.cert,
                "-days",
                "2",
                "-subj",
                "/CN=token issuer",
            ],
            check=True,
            capture_output=True,
        )
        der = subprocess.run(
            ["openssl", "x509", "-in", self.cert, "-outform", "DER"],
            check=True,
            capture_output=True,
        ).stdout
        self._x5c = base64.b64encode(der).decode()
        self.user, self.password, self.anonymous = user, password, anonymous
        self.requests: list[dict[str, list[str]]] = []
        self.service = "unionfs-test-registry"
        self.issuer = "unionfs-test-issuer"
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                server.requests.append(query)
                header = self.headers.get("Authorization", "")
                expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                if header != expected and not (server.anonymous and not header):
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": server.token(query.get("scope", []))}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self._httpd.server_address[1]}/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def token(self, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": self.issuer,
            "sub": self.user,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", self.key],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return f"{signing_input}.{_b64(sig)}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@dataclass
class Registry:
    host: str
    scheme: str
    root: Path
    certs: Certs | None = None
    user: str | None = None
    password: str | None = None
    token_server: TokenServer | None = None
    log: Path = field(default_factory=Path)

    def ref(self, repo: str) -> str:
        return f"{self.host}/{repo}"

    @property
    def tls_flags(self) -> list[str]:
        """What unionfs, skopeo and podman need to reach this registry."""
        if self.certs is None:
            return ["--tls-verify=false"]
        return [f"--cert-dir={self.certs.dir / 'ca'}"]


@contextlib.contextmanager
def run_registry(
    d: Path,
    *,
    tls: bool = False,
    htpasswd: tuple[str, str] | None = None,
    token: TokenServer | None = None,
) -> Iterator[Registry]:
    """``docker-registry serve`` on a free port of 127.0.0.1, until the block ends."""
    assert REGISTRY is not None
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    host = f"127.0.0.1:{port}"
    config = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {d / 'data'}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: {host}",
        f"  secret: {secrets.token_hex(16)}",
    ]
    certs = None
    if tls:
        certs = make_certs(d / "certs")
        (d / "certs" / "ca").mkdir(exist_ok=True)
        shutil.copy(certs.ca, d / "certs" / "ca" / "ca.crt")
        config += ["  tls:", f"    certificate: {certs.cert}", f"    key: {certs.key}"]
    user = password = None
    if htpasswd is not None:
        user, password = htpasswd
        line = subprocess.run(
            ["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True
        ).stdout.strip()
        (d / "htpasswd").write_text(line + "\n")
        config += ["auth:", "  htpasswd:", "    realm: test", f"    path: {d / 'htpasswd'}"]
    elif token is not None:
        user, password = token.user, token.password
        config += [
            "auth:",
            "  token:",
            f"    realm: {token.realm}",
            f"    service: {token.service}",
            f"    issuer: {token.issuer}",
            f"    rootcertbundle: {token.cert}",
        ]
    (d / "config.yml").write_text("\n".join(config) + "\n")
    log = d / "registry.log"
    with open(log, "wb") as out:
        # The registry reads REGISTRY_* variables as configuration (REGISTRY_AUTH_FILE!).
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        proc = subprocess.Popen(
            [REGISTRY, "serve", str(d / "config.yml")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    scheme = "https" if tls else "http"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
            try:
                httpx.get(f"{scheme}://{host}/v2/", verify=False, timeout=2)  # noqa: S501
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("docker-registry did not start") from None
                time.sleep(0.05)
        yield Registry(host, scheme, d, certs, user, password, token, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class CuttingProxy:
    """A TCP proxy to `target` that closes the first connection serving a blob
    after `cut_after` bytes of the answer, once; every other byte passes.

    With `ignore_range`, requests reach the registry without their ``Range``
    header (as from a registry that ignores it). With `corrupt`, the cut is
    replaced by flipping the byte there (a blob that does not match its digest)."""

    def __init__(
        self,
        target: tuple[str, int],
        cut_after: int,
        *,
        ignore_range: bool = False,
        corrupt: bool = False,
    ) -> None:
        self.target, self.cut_after = target, cut_after
        self.ignore_range, self.corrupt = ignore_range, corrupt
        self.cuts = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        state = {"blob": False}

        def up() -> None:
            with contextlib.suppress(OSError):
                while data := client.recv(65536):
                    if b"GET /v2/" in data and b"/blobs/sha256:" in data:
                        state["blob"] = True
                    if self.ignore_range:  # the same length: "X-Nope: bytes=N-"
                        data = re.sub(rb"(?im)^range:", b"X-Nope:", data)
                    upstream.sendall(data)
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)

        threading.Thread(target=up, daemon=True).start()
        sent = 0
        try:
            while data := upstream.recv(65536):
                with self._lock:
                    cut = state["blob"] and self.cuts == 0 and sent + len(data) > self.cut_after
                    if cut:
                        self.cuts += 1
                if cut and self.corrupt:
                    at = max(0, self.cut_after - sent)
                    data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
                elif cut:
                    client.sendall(data[: max(0, self.cut_after - sent)])
                    break
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._closed = True
        self._sock.close()
