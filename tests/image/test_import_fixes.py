"""Images other tools write: umoci's unpadded last tar member, one config under
two manifests (each tag keeps its own), an OCI layout's plain ref names and
``DIR:REF`` selection (as skopeo's ``oci:`` transport)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import oci
from unionfs.errors import UnionfsError
from unionfs.image.refs import Reference
from unionfs.image.unpack import LayerError, unpack_layer
from unionfs.store.export import export_image
from unionfs.store.store import Store

requires_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is missing")


def _unpadded(data: bytes) -> bytes:
    """A tar of one 700-byte file as umoci writes some: no padding after the last
    member's data, no end-of-archive blocks."""
    return oci.tar_bytes([oci.file("srv/www/index.html", data)], end_blocks=False)[
        : 512 + len(data)
    ]


def test_unpadded_last_member_is_accepted(tmp_path: Path) -> None:
    blob = _unpadded(b"x" * 700)
    (tmp_path / "a").mkdir()
    result = unpack_layer(io.BytesIO(blob), tmp_path / "a")
    assert (tmp_path / "a" / "srv/www/index.html").read_bytes() == b"x" * 700
    assert result.entries == 1
    assert result.diff_id == oci.sha256(blob)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (
            _unpadded(b"x" * 700)[:-10],
            "truncated tar member srv/www/index.html: the layer ends "
            "inside its data (700 bytes declared)",
        ),
        (_unpadded(b"x" * 700) + b"\0\0junk", "the padding after its data is not zeros"),
    ],
)
def test_short_member_still_refused(tmp_path: Path, blob: bytes, message: str) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(LayerError, match=re.escape(message)):
        unpack_layer(io.BytesIO(blob), tmp_path / "a")


def test_unpadded_layer_imports(tmp_path: Path) -> None:
    layer = oci.Layer(_unpadded(b"<html>\n" * 100))
    layout = oci.oci_layout(tmp_path / "lay", [([layer], "example.org/www:1")])
    store = Store(tmp_path / "store")
    [done] = store.import_path(layout)
    assert done.tags == (Reference("example.org/www", "1"),)


def test_one_config_two_manifests_keep_their_own(tmp_path: Path) -> None:
    tars = [oci.tar_bytes([oci.file("a", "hello")]), oci.tar_bytes([oci.file("b", "world")])]
    gz = [oci.Layer(t) for t in tars]
    zs = [oci.Layer(t, compression="zstd") for t in tars]
    layout = oci.oci_layout(
        tmp_path / "lay", [(gz, "example.org/app:gzip"), (zs, "example.org/app:zstd")]
    )
    index = json.loads((layout / "index.json").read_text())
    digests = {
        d["annotations"]["org.opencontainers.image.ref.name"]: d["digest"]
        for d in index["manifests"]
    }
    store = Store(tmp_path / "store")
    results = store.import_path(layout)
    assert len({r.image.id for r in results}) == 1
    image = store.resolve_image("example.org/app:zstd")
    for tag in ("gzip", "zstd"):
        ref = Reference("example.org/app", tag)
        assert image.manifest_for(ref) == digests[str(ref)]
        out = tmp_path / f"out-{tag}"
        export_image(store, str(ref), "oci", out)
        exported = json.loads((out / "index.json").read_text())["manifests"][0]["digest"]
        assert exported == digests[str(ref)]
        blob = store.read_blob(exported)
        assert oci.sha256(blob) == exported
    assert store.resolve_image(f"example.org/app@{digests['example.org/app:zstd']}").id == image.id
    # Both manifests' blobs outlive a garbage collection.
    store.collect_garbage()
    for ref in digests:
        export_image(store, ref, "oci-archive", tmp_path / f"{ref.rsplit(':', 1)[1]}.tar")


@requires_skopeo
def test_plain_ref_names_and_dir_ref(tmp_path: Path) -> None:
    one = oci.Layer(oci.tar_bytes([oci.file("one", "1")]))
    two = oci.Layer(oci.tar_bytes([oci.file("two", "2")]))
    src = oci.oci_layout(tmp_path / "src", [([one], "a"), ([two], "b")])
    dest = tmp_path / "Demo"
    for ref, tag in (("a", "1.0"), ("b", "2.0")):
        subprocess.run(
            ["skopeo", "copy", f"oci:{src}:{ref}", f"oci:{dest}:{tag}"],
            check=True,
            capture_output=True,
        )
    store = Store(tmp_path / "store")
    [picked] = store.import_path(Path(f"{dest}:2.0"))
    assert picked.tags == (Reference("localhost/demo", "2.0"),)
    assert store.config(picked.image)["rootfs"]["diff_ids"] == [oci.sha256(two.tar)]
    both = store.import_path(dest)
    assert sorted(str(t) for r in both for t in r.tags) == [
        "localhost/demo:1.0",
        "localhost/demo:2.0",
    ]
    with pytest.raises(UnionfsError, match=r"has no image named '3.0'; its ref names: 1.0, 2.0"):
        store.import_path(Path(f"{dest}:3.0"))
    [named] = store.import_path(Path(f"{dest}:1.0"), Reference("mine/app", "v1"))
    assert named.tags == (Reference("mine/app", "v1"),)
