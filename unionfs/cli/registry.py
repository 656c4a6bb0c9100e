"""The registry commands: pull, push, login, logout.

Progress goes to standard error: on a terminal, rich bars (one per layer blob
and one for the whole image, with sizes and rate); otherwise a line per blob.
What was pulled or pushed is printed on standard output. Passwords are never
printed.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.progress import (
    Progress,
    TaskID,
)

from unionfs.cli import display
from unionfs.cli.common import get_store
from unionfs.errors import UnionfsError
from unionfs.image.registry import auth
from unionfs.image.registry.manifests import parse_platform
from unionfs.image.registry.reference import DOCKER_HUB, RegistryRef, parse_registry_reference
from unionfs.store.records import LayerInfo, short_id

if TYPE_CHECKING:
    from unionfs.image.registry.client import RegistryClient

# The registry client (httpx) is imported by the commands that use it, so that
# every other command, and every mount's daemon, starts without it.


class _Bars:
    """One bar per blob and one for the image on a terminal; lines otherwise."""

    def __init__(self, verb: str) -> None:
        self._verb = verb
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._done: dict[str, int] = {}
        self._sizes: dict[str, int | None] = {}
        self._total: TaskID | None = None
        self._layer = (0, 0)

    @contextlib.contextmanager
    def running(self) -> Iterator[_Bars]:
        with display.transfer_progress() as self._progress:
            yield self

    def echo(self, text: str, err: bool = True) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            click.echo(text, err=err)

    def _start_total(self, what: str, blobs: list[tuple[str, int | None]]) -> None:
        if self._progress is not None:
            total = sum(s or 0 for _, s in blobs) or None
            self._total = self._progress.add_task(what, total=total)

    def _start(self, digest: str, size: int | None) -> None:
        with self._lock:
            self._sizes[digest] = size
            self._done[digest] = 0
            if self._progress is not None:
                self._tasks[digest] = self._progress.add_task(
                    f"  blob {short_id(digest)}", total=size
                )

    def blob_progress(self, digest: str, done: int) -> None:
        with self._lock:
            self._done[digest] = done
            if self._progress is not None:
                self._progress.update(self._tasks[digest], completed=done)
                if self._total is not None:
                    self._progress.update(self._total, completed=sum(self._done.values()))

    def _finish(self, digest: str, text: str) -> None:
        size = self._sizes.get(digest)
        if size is not None:
            self.blob_progress(digest, size)
        self.echo(f"blob {digest}: {text}")


class _PullPrinter(_Bars):
    def resolved(self, ref: RegistryRef, digest: str, blobs: list[tuple[str, int | None]]) -> None:
        size = display.human_size(sum(s or 0 for _, s in blobs))
        self.echo(f"{ref}: manifest {digest}, {len(blobs)} layers, {size}")
        self._start_total(f"{ref.name}", blobs)

    def blob_start(self, digest: str, size: int | None, *, present: bool) -> None:
        self._start(digest, size)
        if present:
            self._finish(digest, "already in the store")

    def blob_done(self, digest: str) -> None:
        self._finish(digest, f"downloaded ({display.human_size(self._sizes[digest] or 0)})")

    # the store's import report
    def layer_start(self, index: int, count: int, diff_id: str, size: int | None) -> None:
        self._layer = (index, count)

    def layer_progress(self, done: int) -> None:
        pass

    def layer_done(self, diff_id: str, *, reused: bool, info: LayerInfo) -> None:
        index, count = self._layer
        head = f"layer {index + 1}/{count} {short_id(diff_id)}"
        if reused:
            self.echo(f"{head}: already in the store ({display.human_size(info.size)})")
        else:
            self.echo(
                f"{head}: unpacked {info.entries} entries, {display.human_size(info.size)} "
                f"({info.compression})"
            )

    def warning(self, text: str) -> None:
        self.echo(f"warning: {text}")


class _PushPrinter(_Bars):
    def blob_start(self, digest: str, size: int) -> None:
        with self._lock:
            if self._progress is not None:  # the image's bar grows with each blob
                if self._total is None:
                    self._total = self._progress.add_task("image", total=0)
                total = self._progress.tasks[self._total].total or 0
                self._progress.update(self._total, total=total + size)
        self._start(digest, size)

    def blob_done(self, digest: str, how: str) -> None:
        text = {"exists": "already in the registry", "mounted": "mounted from another repository"}
        self._finish(
            digest, text.get(how, f"uploaded ({display.human_size(self._sizes[digest] or 0)})")
        )


def _tls_options(f: Any) -> Any:
    f = click.option(
        "--authfile",
        type=click.Path(path_type=Path, dir_okay=False),
        help="The credentials file (default: $REGISTRY_AUTH_FILE, then the files podman "
        "and docker keep).",
    )(f)
    f = click.option(
        "--cert-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="CA certificates (*.crt) and client certificate (*.cert, *.key) for the "
        "registry (default: /etc/containers/certs.d/HOST).",
    )(f)
    f = click.option(
        "--tls-verify",
        type=click.BOOL,
        default=True,
        is_flag=False,
        flag_value=True,
        metavar="BOOL",
        help="Check the registry's TLS certificate (default: true); false also allows plain HTTP.",
    )(f)
    return f


def _client(
    ref: RegistryRef,
    tls_verify: bool,
    cert_dir: Path | None,
    authfile: Path | None,
    creds: auth.Credentials | None = None,
) -> RegistryClient:
    from unionfs.image.registry.client import RegistryClient  # noqa: PLC0415 (httpx)

    if creds is None:
        creds = auth.lookup(ref.host, authfile)
    return RegistryClient(ref.api_host, credentials=creds, tls_verify=tls_verify, cert_dir=cert_dir)


@contextlib.contextmanager
def _about(ref: RegistryRef) -> Iterator[None]:
    """Errors reaching docker.io say why docker.io was asked at all."""
    from unionfs.image.registry.client import RegistryError  # noqa: PLC0415 (httpx)

    try:
        yield
    except RegistryError as e:
        if ref.host == DOCKER_HUB and e.message.startswith("cannot reach"):
            raise UnionfsError(
                f"{ref}: a name without a registry host is docker.io's, which cannot be "
                f"reached from here ({e.message.split(': ', 1)[-1]}): give HOST[:PORT]/REPO"
            ) from None
        raise


@click.command("pull")
@click.argument("reference", metavar="[docker://]HOST[:PORT]/REPO[:TAG|@DIGEST]")
@click.option(
    "--platform",
    metavar="OS/ARCH[/VARIANT]",
    help="The image of an index to pull (default: this machine's).",
)
@_tls_options
@click.pass_context
def pull_cmd(
    ctx: click.Context,
    reference: str,
    platform: str | None,
    tls_verify: bool,
    cert_dir: Path | None,
    authfile: Path | None,
) -> None:
    """Pull an image from a registry into the store.

    The image is named as written, host included (127.0.0.1:5000/demo:1), as podman
    names it. Blobs already in the store are not downloaded again.
    """
    ref = parse_registry_reference(reference)
    want = parse_platform(platform)
    store = get_store(ctx)
    printer = _PullPrinter("pull")
    with _about(ref), _client(ref, tls_verify, cert_dir, authfile) as client, printer.running():
        from unionfs.store.pull import pull_image  # noqa: PLC0415 (httpx)

        pulled = pull_image(store, client, ref, printer, platform=want)
    image = pulled.imported.image
    for tag, old in pulled.imported.untagged_from:
        click.echo(f"tag {tag} moved from image {short_id(old)}")
    fetched = (
        f"{pulled.downloaded} blob{'' if pulled.downloaded == 1 else 's'} downloaded, "
        f"{display.human_size(pulled.downloaded_bytes)}"
    )
    shown = ref.store_reference() or f"{ref.name}@{pulled.manifest_digest}"
    click.echo(f"Pulled {shown} ({short_id(image.id)}): {fetched}")
    click.echo(f"Digest: {pulled.manifest_digest}")


@click.command("push")
@click.argument("image")
@click.argument("destination", required=False, metavar="[[docker://]HOST[:PORT]/REPO[:TAG]]")
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    metavar="BYTES",
    help="Upload blobs in chunks of this size (default: in one request up to 64 MiB).",
)
@_tls_options
@click.pass_context
def push_cmd(
    ctx: click.Context,
    image: str,
    destination: str | None,
    chunk_size: int | None,
    tls_verify: bool,
    cert_dir: Path | None,
    authfile: Path | None,
) -> None:
    """Push an image of the store to a registry (default: to the name IMAGE gives).

    Blobs the registry has are skipped, blobs of another repository of the same
    registry are mounted across; the manifest is sent byte for byte, so its digest
    stays the same.
    """
    target = parse_registry_reference(destination or image, for_push=True)
    store = get_store(ctx)
    printer = _PushPrinter("push")
    with (
        _about(target),
        _client(target, tls_verify, cert_dir, authfile) as client,
        printer.running(),
    ):
        from unionfs.store.push import push_image  # noqa: PLC0415 (httpx)

        pushed = push_image(store, client, image, target, printer, chunk_size=chunk_size)
    counts: dict[str, int] = {}
    for how in pushed.how.values():
        counts[how] = counts.get(how, 0) + 1
    summary = ", ".join(f"{n} {how}" for how, n in sorted(counts.items()))
    click.echo(f"Pushed {target} ({short_id(pushed.image_id)}): blobs {summary}")
    click.echo(f"Digest: {pushed.manifest_digest}")


def _host(text: str) -> str:
    ref = text.removeprefix("docker://").rstrip("/")
    host = ref.split("/", 1)[0]
    if not host or " " in host:
        raise UnionfsError(f"invalid registry {text!r}: HOST[:PORT] expected")
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host


@click.command("login")
@click.argument("registry", metavar="HOST[:PORT]")
@click.option("-u", "--username", help="The user name (asked when not given).")
@click.option("-p", "--password", help="The password (better: --password-stdin, or asked).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@_tls_options
def login_cmd(
    registry: str,
    username: str | None,
    password: str | None,
    password_stdin: bool,
    tls_verify: bool,
    cert_dir: Path | None,
    authfile: Path | None,
) -> None:
    """Check credentials with a registry and keep them in the credentials file."""
    host = _host(registry)
    if password_stdin:
        if password is not None:
            raise click.UsageError("--password and --password-stdin exclude each other")
        password = sys.stdin.readline().rstrip("\r\n")
    if username is None:
        username = click.prompt("Username")
    if password is None:
        password = click.prompt("Password", hide_input=True)
    creds = auth.Credentials(username, password)
    ref = RegistryRef(host, "unionfs", None, None)
    with _about(ref), _client(ref, tls_verify, cert_dir, authfile, creds) as client:
        client.check(client.request("GET", client.url(""), what="login"), f"login to {host}")
    path = auth.store(host, creds, authfile)
    click.echo(f"Login Succeeded! (credentials kept in {path})")


@click.command("logout")
@click.argument("registry", metavar="HOST[:PORT]")
@click.option(
    "--authfile",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The credentials file (default: the one login writes).",
)
def logout_cmd(registry: str, authfile: Path | None) -> None:
    """Remove the credentials kept for a registry."""
    host = _host(registry)
    path = auth.remove(host, authfile)
    if path is None:
        raise UnionfsError(f"not logged in to {host} (in {auth.write_file(authfile)})")
    click.echo(f"Removed login credentials for {host}")


def register(cli: click.Group) -> None:
    for cmd in (pull_cmd, push_cmd, login_cmd, logout_cmd):
        cli.add_command(cmd)
