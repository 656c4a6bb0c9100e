"""pull, push, login and logout against a real registry (Debian's docker-registry
on 127.0.0.1): plain HTTP, TLS with the test's CA, htpasswd basic auth and the
bearer-token flow; interop with skopeo, umoci and podman."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import oci
from tests.support.cli import run_unionfs
from tests.support.images import BUSYBOX, podman
from tests.support.kernel import TmpMounts
from tests.support.registry import (
    CuttingProxy,
    Registry,
    TokenServer,
    requires_registry,
    run_registry,
)
from tests.support.tree import compare, snapshot
from unionfs.store.store import Store

pytestmark = [
    requires_registry,
    pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed"),
]


def skopeo(*args: str | Path) -> str:
    proc = subprocess.run(["skopeo", *map(str, args)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"skopeo {args}: {proc.stderr}"
    return proc.stdout


def _layers() -> list[oci.Layer]:
    base = oci.tar_bytes(
        [
            oci.directory("etc"),
            oci.file("etc/motd", "hello\n"),
            oci.directory("srv"),
            oci.file("srv/old.txt", "old"),
            oci.symlink("srv/link", "old.txt"),
            oci.file("srv/exec", "#!/bin/sh\n", mode=0o755, uid=1000, gid=1000),
        ]
    )
    top = oci.tar_bytes(
        [
            oci.directory("etc"),
            oci.directory("srv"),
            oci.whiteout("srv/old.txt"),
            oci.file("srv/new.txt", "new"),
            oci.file("etc/motd", "changed\n"),
        ]
    )
    return [oci.Layer(base), oci.Layer(top, compression="none")]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry")


@pytest.fixture(scope="module")
def layout(work: Path) -> Path:
    return oci.oci_layout(work / "layout", [(_layers(), "1")])


@pytest.fixture(scope="module")
def plain(work: Path, layout: Path) -> Iterator[Registry]:
    with run_registry(work / "plain") as reg:
        skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:1", f"docker://{reg.host}/demo:1")
        yield reg


@pytest.fixture
def auth_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Credentials files of this test only (the commands inherit the environment)."""
    authfile = tmp_path / "auth.json"
    authfile.write_text('{"auths": {}}')
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(authfile))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return authfile


def _store_image(root: Path, name: str) -> dict[str, object]:
    out = run_unionfs("image", "inspect", name, root=root).stdout
    doc: list[dict[str, object]] = json.loads(out)
    return doc[0]


def test_pull_matches_umoci_unpack_and_push_keeps_the_digest(
    plain: Registry, layout: Path, tmp_path: Path, tmp_mounts: TmpMounts, auth_env: Path
) -> None:
    root = tmp_path / "store"
    ref = plain.ref("demo:1")
    pulled = run_unionfs("pull", "--tls-verify=false", f"docker://{ref}", root=root)
    assert f"Pulled {ref}" in pulled.stdout and "2 blobs downloaded" in pulled.stdout
    images = run_unionfs("images", root=root).stdout.splitlines()
    assert images[1].split()[:2] == [plain.ref("demo"), "1"]
    info = _store_image(root, ref)
    registry_digest = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))[
        "Digest"
    ]
    assert info["RepoDigests"] == [f"{plain.ref('demo')}@{registry_digest}"]

    # The merged tree is the one umoci unpacks from the same image.
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:1", tmp_path / "umoci"],
        check=True,
        capture_output=True,
    )
    store = Store(root)
    image = store.resolve_image(ref)
    merged = snapshot(tmp_mounts.unionfs(store.lowers(image.diff_ids)))
    reference = snapshot(tmp_path / "umoci" / "rootfs")
    for tree in (merged, reference):  # the root dir's times are the unpacker's
        tree.pop(".")
    diffs = compare(reference, merged, ignore={"nlink", "size@dir"}, names=("umoci", "unionfs"))
    assert diffs == [], "\n".join(diffs)

    # Again: nothing is downloaded.
    again = run_unionfs("pull", "--tls-verify=false", ref, root=root).stdout
    assert "0 blobs downloaded" in again

    # Pushed back under other names: same manifest digest; blobs mounted across
    # repositories, or skipped where the registry has them.
    out = run_unionfs("push", "--tls-verify=false", ref, plain.ref("copy:2"), root=root).stdout
    assert "3 mounted" in out and f"Digest: {registry_digest}" in out
    out = run_unionfs("push", "--tls-verify=false", ref, plain.ref("copy:3"), root=root).stdout
    assert "3 exists" in out
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{plain.ref('copy:2')}")
    assert oci.sha256(raw.encode()) == registry_digest
    inspected = json.loads(
        skopeo("inspect", "--tls-verify=false", f"docker://{plain.ref('copy:2')}")
    )
    assert inspected["Digest"] == registry_digest and len(inspected["Layers"]) == 2


def test_push_uploads_in_chunks_and_podman_pulls_it(
    plain: Registry, tmp_path: Path, auth_env: Path
) -> None:
    big = random.Random(7).randbytes(300_000)  # noqa: S311 (test data)
    entries = [oci.file("big", big)]
    if BUSYBOX.is_file():
        entries += [oci.directory("bin"), oci.file("bin/busybox", BUSYBOX.read_bytes(), mode=0o755)]
    layer = oci.Layer(oci.tar_bytes(entries))
    lay = oci.oci_layout(tmp_path / "lay", [([layer], "x")])
    root = tmp_path / "store"
    run_unionfs("image", "import", str(lay), "local/big:1", root=root)
    out = run_unionfs(
        "push",
        "--tls-verify=false",
        "--chunk-size=65536",
        "local/big:1",
        plain.ref("big:1"),
        root=root,
    ).stdout
    assert "2 uploaded" in out
    digest = out.rsplit("Digest: ", 1)[1].strip()
    assert (
        json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{plain.ref('big:1')}"))[
            "Digest"
        ]
        == digest
    )
    if shutil.which("podman") is None or os.geteuid() != 0:
        return

    podman(tmp_path / "podman", "pull", "--tls-verify=false", plain.ref("big:1"))
    shown = podman(
        tmp_path / "podman", "image", "inspect", "--format", "{{.Digest}}", plain.ref("big:1")
    )
    assert shown.strip() == digest
    if BUSYBOX.is_file() and shutil.which("runc") is not None:
        out = podman(
            tmp_path / "podman",
            "run",
            "--rm",
            "--runtime",
            "runc",
            "--network=none",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
            plain.ref("big:1"),
            "/bin/busybox",
            "sha256sum",
            "/big",
        )
        assert out.split()[0] == oci.sha256(big).removeprefix("sha256:")


def test_index_platforms(plain: Registry, tmp_path: Path, auth_env: Path) -> None:
    """A multi-platform image: the host's image by default, --platform for another."""
    lay = tmp_path / "multi"
    amd = oci.oci_layout(
        tmp_path / "a", [([oci.Layer(oci.tar_bytes([oci.file("arch", "amd64")]))], "a")]
    )
    arm = oci.oci_layout(
        tmp_path / "b",
        [([oci.Layer(oci.tar_bytes([oci.file("arch", "arm64")]))], "b")],
        architecture="arm64",
    )
    manifests = []
    for src, arch in ((amd, "amd64"), (arm, "arm64")):
        shutil.copytree(src / "blobs", lay / "blobs", dirs_exist_ok=True)
        desc = json.loads((src / "index.json").read_text())["manifests"][0]
        desc.pop("annotations")
        desc["platform"] = {"os": "linux", "architecture": arch}
        manifests.append(desc)
    index = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": manifests})
    index_digest = oci.write_blob(lay, index.encode())
    (lay / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (lay / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": oci.OCI_INDEX,
                        "digest": index_digest,
                        "size": len(index),
                        "annotations": {"org.opencontainers.image.ref.name": "m"},
                    }
                ],
            }
        )
    )
    skopeo(
        "copy",
        "--all",
        "--dest-tls-verify=false",
        f"oci:{lay}:m",
        f"docker://{plain.ref('multi:1')}",
    )
    root = tmp_path / "store"
    run_unionfs("pull", "--tls-verify=false", plain.ref("multi:1"), root=root)
    assert _store_image(root, plain.ref("multi:1"))["Architecture"] == "amd64"
    run_unionfs(
        "pull", "--tls-verify=false", "--platform=linux/arm64", plain.ref("multi:1"), root=root
    )
    assert _store_image(root, plain.ref("multi:1"))["Architecture"] == "arm64"
    bad = run_unionfs(
        "pull",
        "--tls-verify=false",
        "--platform=linux/s390x",
        plain.ref("multi:1"),
        root=root,
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "unionfs: error: no image for linux/s390x in the index; it has: linux/amd64, linux/arm64"
    ]


def test_many_layers_and_a_cut_connection_resumes(
    plain: Registry, tmp_path: Path, auth_env: Path
) -> None:
    rng = random.Random(3)  # noqa: S311 (test data)
    layers = [oci.Layer(oci.tar_bytes([oci.file(f"f{i}", f"layer {i}")])) for i in range(22)]
    layers.append(
        oci.Layer(oci.tar_bytes([oci.file("big", rng.randbytes(2_000_000))]), compression="none")
    )
    lay = oci.oci_layout(tmp_path / "lay", [(layers, "t")])
    skopeo("copy", "--dest-tls-verify=false", f"oci:{lay}:t", f"docker://{plain.ref('many:1')}")
    port = int(plain.host.rsplit(":", 1)[1])
    proxy = CuttingProxy(("127.0.0.1", port), cut_after=700_000)
    try:
        root = tmp_path / "store"
        ref = f"127.0.0.1:{proxy.port}/many:1"
        out = run_unionfs("pull", "--tls-verify=false", ref, root=root)
        assert "23 blobs downloaded" in out.stdout
        assert proxy.cuts == 1
        info = _store_image(root, ref)
        assert len(info["RootFS"]["Layers"]) == 23  # type: ignore[index]
        assert not list((root / "tmp").glob("pull-*"))
    finally:
        proxy.close()


def _big_layer_image(plain: Registry, tmp_path: Path, name: str) -> bytes:
    """An image of a small gzip layer and a plain one of 2 MB of random bytes,
    in the registry as `name`; the random bytes."""
    big = random.Random(5).randbytes(2_000_000)  # noqa: S311 (test data)
    layers = [
        oci.Layer(oci.tar_bytes([oci.file("small", "small")])),
        oci.Layer(oci.tar_bytes([oci.file("big", big)]), compression="none"),
    ]
    lay = oci.oci_layout(tmp_path / "lay", [(layers, "t")])
    skopeo("copy", "--dest-tls-verify=false", f"oci:{lay}:t", f"docker://{plain.ref(name)}")
    return big


def test_a_registry_that_ignores_range_after_a_cut(
    plain: Registry, tmp_path: Path, auth_env: Path
) -> None:
    big = _big_layer_image(plain, tmp_path, "norange:1")
    port = int(plain.host.rsplit(":", 1)[1])
    proxy = CuttingProxy(("127.0.0.1", port), cut_after=700_000, ignore_range=True)
    try:
        root = tmp_path / "store"
        ref = f"127.0.0.1:{proxy.port}/norange:1"
        out = run_unionfs("pull", "--tls-verify=false", ref, root=root)
        assert "2 blobs downloaded" in out.stdout
        assert proxy.cuts == 1
        assert [p.read_bytes() for p in root.glob("layers/*/diff/big")] == [big]
    finally:
        proxy.close()


def test_a_corrupt_blob_is_never_visible(plain: Registry, tmp_path: Path, auth_env: Path) -> None:
    """The layer unpacks as its blob arrives; a blob that does not hash to its
    digest leaves neither the layer nor the blob in the store."""
    _big_layer_image(plain, tmp_path, "corrupt:1")
    port = int(plain.host.rsplit(":", 1)[1])
    proxy = CuttingProxy(("127.0.0.1", port), cut_after=700_000, corrupt=True)
    try:
        root = tmp_path / "store"
        ref = f"127.0.0.1:{proxy.port}/corrupt:1"
        r = run_unionfs("pull", "--tls-verify=false", ref, root=root, check=False)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and proxy.cuts == 1
        assert lines[-1].startswith("unionfs: error: "), r.stderr
        # (skopeo compressed the layer: gzip's own check may see the flip first)
        assert "the bytes received hash to sha256:" in lines[-1] or "corrupt gzip" in lines[-1]
        assert not list(root.glob("layers/*/diff/big"))
        assert len(list(root.glob("layers/*/layer.json"))) <= 1  # the small layer, whole
        for blob in (root / "blobs" / "sha256").glob("*"):
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
        assert not list(root.glob("images/*.json"))
        assert not list(root.glob("tmp/*"))  # no staging dir, no lease left
        assert not list((root / "layers").glob("*.lock"))
    finally:
        proxy.close()


def test_errors_are_one_line(plain: Registry, tmp_path: Path, auth_env: Path) -> None:
    root = tmp_path / "store"
    cases = [
        (["pull", "--tls-verify=false", plain.ref("nothere:1")], "not in the registry"),
        (["pull", plain.ref("demo:1")], "does not speak TLS: use --tls-verify=false"),
        (["pull", "--tls-verify=false", "127.0.0.1:1/x"], "cannot reach registry 127.0.0.1:1"),
        (["pull", "demo"], "docker.io's, which cannot be reached from here"),
        (["push", "--tls-verify=false", "no/such:image", plain.ref("x:1")], "no such image"),
        (["logout", plain.host], "not logged in to"),
    ]
    for args, message in cases:
        r = run_unionfs(*args, root=root, check=False)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and message in lines[0], (args, r.stderr)
    assert not (root / "images").exists() or not list((root / "images").iterdir())


def test_tls_with_the_tests_ca(work: Path, layout: Path, tmp_path: Path, auth_env: Path) -> None:
    with run_registry(work / "tls", tls=True) as reg:
        assert reg.certs is not None
        skopeo(
            "copy",
            f"--dest-cert-dir={reg.certs.dir / 'ca'}",
            f"oci:{layout}:1",
            f"docker://{reg.ref('demo:1')}",
        )
        root = tmp_path / "store"
        r = run_unionfs("pull", reg.ref("demo:1"), root=root, check=False)
        assert r.returncode == 1 and "TLS certificate is not trusted" in r.stderr
        assert "--cert-dir" in r.stderr
        run_unionfs("pull", *reg.tls_flags, reg.ref("demo:1"), root=root)
        run_unionfs("pull", "--tls-verify=false", reg.ref("demo:1"), root=root)
        run_unionfs("push", *reg.tls_flags, reg.ref("demo:1"), reg.ref("back:1"), root=root)


def test_basic_auth_login_logout(work: Path, layout: Path, tmp_path: Path, auth_env: Path) -> None:
    with run_registry(work / "basic", htpasswd=("alice", "s3cret-pw")) as reg:
        skopeo(
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds=alice:s3cret-pw",
            f"oci:{layout}:1",
            f"docker://{reg.ref('demo:1')}",
        )
        root = tmp_path / "store"
        r = run_unionfs("pull", "--tls-verify=false", reg.ref("demo:1"), root=root, check=False)
        assert r.returncode == 1 and f"requires a login: `unionfs login {reg.host}`" in r.stderr
        bad = run_unionfs(
            "login",
            "--tls-verify=false",
            "-u",
            "alice",
            "-p",
            "wrong",
            reg.host,
            root=root,
            check=False,
        )
        assert bad.returncode == 1 and "authentication failed as alice" in bad.stderr
        assert "wrong" not in bad.stderr and json.loads(auth_env.read_text()) == {"auths": {}}
        ok = run_unionfs(
            "login", "--tls-verify=false", "-u", "alice", "-p", "s3cret-pw", reg.host, root=root
        )
        assert "Login Succeeded" in ok.stdout and "s3cret" not in ok.stdout + ok.stderr
        assert reg.host in json.loads(auth_env.read_text())["auths"]
        pulled = run_unionfs("pull", "--tls-verify=false", reg.ref("demo:1"), root=root)
        assert "s3cret" not in pulled.stdout + pulled.stderr
        run_unionfs("push", "--tls-verify=false", reg.ref("demo:1"), reg.ref("again:1"), root=root)
        run_unionfs("logout", reg.host, root=root)
        assert reg.host not in json.loads(auth_env.read_text())["auths"]
        # podman's and docker's own files are read too.
        docker = Path(os.environ["HOME"]) / ".docker" / "config.json"
        docker.parent.mkdir(parents=True)
        subprocess.run(
            [
                "skopeo",
                "login",
                "--tls-verify=false",
                "--authfile",
                str(docker),
                "-u",
                "alice",
                "-p",
                "s3cret-pw",
                reg.host,
            ],
            check=True,
            capture_output=True,
        )
        run_unionfs("pull", "--tls-verify=false", reg.ref("demo:1"), root=root)


def test_token_flow(work: Path, layout: Path, tmp_path: Path, auth_env: Path) -> None:
    token = TokenServer(work / "token-server", "bob", "tok-pw")
    try:
        with run_registry(work / "token", token=token) as reg:
            root = tmp_path / "store"
            run_unionfs("image", "import", str(layout), "local/demo:1", root=root)
            r = run_unionfs(
                "push",
                "--tls-verify=false",
                "local/demo:1",
                reg.ref("demo:1"),
                root=root,
                check=False,
            )
            assert r.returncode == 1 and "anonymous access: `unionfs login` first" in r.stderr
            login = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "unionfs",
                    "--root",
                    str(root),
                    "login",
                    "--tls-verify=false",
                    "-u",
                    "bob",
                    "--password-stdin",
                    reg.host,
                ],
                input="tok-pw\n",
                text=True,
                capture_output=True,
                check=False,
            )
            assert login.returncode == 0, login.stderr
            assert "tok-pw" not in login.stdout + login.stderr
            out = run_unionfs(
                "push", "--tls-verify=false", "local/demo:1", reg.ref("demo:1"), root=root
            ).stdout
            assert "3 uploaded" in out
            scopes = [s for q in token.requests for s in q.get("scope", [])]
            assert "repository:demo:pull,push" in scopes
            other = tmp_path / "other"
            run_unionfs("pull", "--tls-verify=false", reg.ref("demo:1"), root=other)
            assert "repository:demo:pull" in [s for q in token.requests for s in q.get("scope", [])]
    finally:
        token.close()


def test_docker_schema2_and_pull_by_digest(
    plain: Registry, layout: Path, tmp_path: Path, auth_env: Path
) -> None:
    """A docker v2 schema 2 manifest (skopeo --format v2s2) pulls, by tag and by
    digest; the digest form is untagged, as in podman."""
    ref = plain.ref("v2s2:1")
    skopeo(
        "copy", "--format", "v2s2", "--dest-tls-verify=false", f"oci:{layout}:1", f"docker://{ref}"
    )
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{ref}")
    assert json.loads(raw)["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    root = tmp_path / "store"
    out = run_unionfs("pull", "--tls-verify=false", ref, root=root).stdout
    digest = out.rsplit("Digest: ", 1)[1].strip()
    assert digest == oci.sha256(raw.encode())
    other = tmp_path / "other"
    run_unionfs("pull", "--tls-verify=false", f"{plain.ref('v2s2')}@{digest}", root=other)
    listed = run_unionfs("images", "--json", root=other).stdout
    assert json.loads(listed)[0]["digest"] == digest
