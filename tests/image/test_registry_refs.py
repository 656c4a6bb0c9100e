"""Registry references (docker's rules), credential files, challenges, platforms."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from unionfs.errors import UnionfsError
from unionfs.image.refs import Reference
from unionfs.image.registry import auth
from unionfs.image.registry.manifests import Platform, choose_platform, parse_platform
from unionfs.image.registry.reference import parse_registry_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "host", "repo", "tag", "digest", "name"),
    [
        ("127.0.0.1:5000/demo:1", "127.0.0.1:5000", "demo", "1", None, "127.0.0.1:5000/demo"),
        ("docker://127.0.0.1:5000/a/b", "127.0.0.1:5000", "a/b", "latest", None, None),
        ("localhost/x", "localhost", "x", "latest", None, None),
        ("reg.example/x@" + DIGEST, "reg.example", "x", None, DIGEST, None),
        ("reg.example/x:t@" + DIGEST, "reg.example", "x", "t", DIGEST, None),
        ("alpine", "docker.io", "library/alpine", "latest", None, "docker.io/library/alpine"),
        ("user/app:2", "docker.io", "user/app", "2", None, None),
        ("index.docker.io/user/app", "docker.io", "user/app", "latest", None, None),
    ],
)
def test_docker_reference_rules(
    text: str, host: str, repo: str, tag: str | None, digest: str | None, name: str | None
) -> None:
    ref = parse_registry_reference(text)
    assert (ref.host, ref.repository, ref.tag, ref.digest) == (host, repo, tag, digest)
    if name is not None:
        assert ref.name == name
    assert ref.reference == (digest or tag)


def test_store_name_is_podmans() -> None:
    ref = parse_registry_reference("127.0.0.1:5000/demo:1")
    assert ref.store_reference() == Reference("127.0.0.1:5000/demo", "1")
    assert parse_registry_reference("h.io/x@" + DIGEST).store_reference() is None
    assert parse_registry_reference("docker.io/library/alpine").api_host == "registry-1.docker.io"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1:5000/Demo", "lower-case"),
        ("127.0.0.1:5000/demo:bad tag", "invalid tag"),
        ("127.0.0.1:5000/demo@sha256:12", "invalid digest"),
        ("oci:/tmp/x", "invalid"),
        ("http://h.io/x", "transport http://"),
    ],
)
def test_bad_references_are_one_line(text: str, message: str) -> None:
    with pytest.raises(UnionfsError, match=message) as e:
        parse_registry_reference(text)
    assert "\n" not in e.value.message


def test_push_goes_to_a_tag() -> None:
    with pytest.raises(UnionfsError, match="push to a tag"):
        parse_registry_reference("h.io/x@" + DIGEST, for_push=True)


def test_bearer_challenge() -> None:
    c = auth.parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"'
    )
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    assert auth.parse_challenge('Basic realm="r"').scheme == "basic"


def _isolated(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    (home / "run").mkdir(parents=True)


def _entry(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_credentials_in_podmans_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _isolated(monkeypatch, tmp_path)
    docker = tmp_path / ".docker" / "config.json"
    docker.parent.mkdir()
    docker.write_text(
        json.dumps(
            {
                "auths": {
                    "h.io": _entry("d", "dp"),
                    "https://index.docker.io/v1/": _entry("hub", "x"),
                }
            }
        )
    )
    assert auth.lookup("h.io") == auth.Credentials("d", "dp", docker)
    assert auth.lookup("docker.io") is not None
    assert auth.lookup("other.io") is None
    config = tmp_path / ".config" / "containers" / "auth.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"auths": {"h.io": _entry("c", "cp")}}))
    assert auth.lookup("h.io").username == "c"  # type: ignore[union-attr]
    written = auth.store("h.io", auth.Credentials("r", "secret:with:colons"))
    assert written == tmp_path / "run" / "containers" / "auth.json"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    found = auth.lookup("h.io")
    assert found is not None and (found.username, found.password) == ("r", "secret:with:colons")
    assert "secret" not in repr(found)
    assert auth.remove("h.io") == written
    assert auth.lookup("h.io").username == "c"  # type: ignore[union-attr]
    assert auth.remove("h.io") is None


def test_authfile_keeps_other_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _isolated(monkeypatch, tmp_path)
    f = tmp_path / "auth.json"
    f.write_text(json.dumps({"auths": {"a.io": _entry("a", "b")}, "credHelpers": {"x": "y"}}))
    auth.store("h.io", auth.Credentials("u", "p"), f)
    doc = json.loads(f.read_text())
    assert set(doc["auths"]) == {"a.io", "h.io"} and doc["credHelpers"] == {"x": "y"}
    f.write_text("not json")
    with pytest.raises(UnionfsError, match="cannot read the credentials file"):
        auth.lookup("h.io", f)


def _index(*platforms: dict[str, str]) -> dict[str, object]:
    return {
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{i:064x}",
                "platform": p,
            }
            for i, p in enumerate(platforms)
        ]
    }


def test_platform_choice() -> None:
    index = _index(
        {"os": "linux", "architecture": "arm", "variant": "v7"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        {"os": "linux", "architecture": "amd64"},
    )
    assert choose_platform(index, Platform("linux", "amd64"))["digest"].endswith("2")
    assert choose_platform(index, Platform("linux", "arm64"))["digest"].endswith("1")
    assert choose_platform(index, parse_platform("linux/arm/v7"))["digest"].endswith("0")
    with pytest.raises(UnionfsError, match=r"no image for linux/s390x.*linux/arm/v7"):
        choose_platform(index, Platform("linux", "s390x"))
    with pytest.raises(UnionfsError, match="OS/ARCH"):
        parse_platform("linux")
