"""What must hold of a store at every moment, and once every command has ended.

`problems` holds the store lock while it looks, so it sees the store as every
command leaves it between two changes: records whole, and everything a record
names in place. Commands in flight may have put layers in place that no record
names yet (their lease keeps them); that is not a problem. `quiescent_problems`
adds what must hold when no command runs any more and a last collection ran:
nothing in ``tmp/``, no layer or blob that nothing uses.
"""

from __future__ import annotations

import json
from pathlib import Path

from unionfs.store.records import SHA256, hex_of
from unionfs.store.store import Store


def problems(root: Path) -> list[str]:
    """Broken references in the store at `root`, checked under the store lock."""
    store = Store(root)
    if not (root / "store.json").exists():
        return []
    out: list[str] = []
    with store.locked():
        images = {i.id: i for i in store.images()}
        for image in images.values():
            name = image.id[7:19]
            for digest in (image.id, image.manifest_digest, *(la.digest for la in image.layers)):
                if not store.blob_path(digest).is_file():
                    out.append(f"image {name}: blob {digest[7:19]} is missing")
            out += _layer_problems(store, f"image {name}", image.diff_ids)
            manifest = store.blob_path(image.manifest_digest)
            if manifest.is_file():
                data = json.loads(manifest.read_bytes())
                if data.get("config", {}).get("digest") != image.id:
                    out.append(f"image {name}: its manifest names another config")
        for c in store.containers():
            box = store.container_path(c.id)
            for d in ("upper", "work"):
                if not (box / d).is_dir():
                    out.append(f"container {c.name}: {d}/ is missing")
            if not store.blob_path(c.image).is_file():
                out.append(f"container {c.name}: the config of its image is missing")
            out += _layer_problems(store, f"container {c.name}", c.diff_ids)
        for ref, image_id in store.tags().items():
            if image_id not in images:
                out.append(f"tag {ref} points at {image_id[7:19]}, which is not in the store")
    return out


def _layer_problems(store: Store, who: str, diff_ids: tuple[str, ...]) -> list[str]:
    out = []
    for d in diff_ids:
        layer = store.layers_dir / hex_of(d)
        if not (layer / "layer.json").is_file() or not (layer / "diff").is_dir():
            out.append(f"{who}: layer {hex_of(d)[:12]} is missing")
    return out


def quiescent_problems(root: Path) -> list[str]:
    """`problems`, then, with no command running: collect garbage once and check that
    ``tmp/`` is empty and every layer and blob left is used by a record."""
    out = problems(root)
    if not (root / "store.json").exists():
        return out
    store = Store(root)
    with store.locked():  # clears what killed commands left in tmp/
        store.collect_garbage()
        leftovers = sorted(p.name for p in store.tmp.iterdir())
        if leftovers:
            out.append(f"tmp/ is not empty: {', '.join(leftovers)}")
        used_layers = {d for i in store.images() for d in i.diff_ids}
        used_layers |= {d for c in store.containers() for d in c.diff_ids}
        for d in store.layer_ids():
            if d not in used_layers:
                out.append(f"layer {hex_of(d)[:12]} is used by nothing after a collection")
        used_blobs = {c.image for c in store.containers()}
        for i in store.images():
            used_blobs |= {i.id, i.manifest_digest, *(la.digest for la in i.layers)}
        for p in store.blobs.iterdir() if store.blobs.is_dir() else ():
            if SHA256 + p.name not in used_blobs:
                out.append(f"blob {p.name[:12]} is used by nothing after a collection")
        for p in store.layers_dir.iterdir():
            if p.is_dir() and not (p / "layer.json").exists():
                out.append(f"layers/{p.name} has no layer.json")
    return out
