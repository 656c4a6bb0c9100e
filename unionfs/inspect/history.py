"""An image's history: the steps of its config, lined up with the layers they made.

Config `history` entries with `empty_layer` made no layer, so steps and layers do
not line up one-to-one; layers the history does not describe (some writers leave
it short) get a row of their own. `unionfs history` prints these rows, and
`explain`/`tree` name each layer by the step that made it.
"""

from __future__ import annotations

from typing import Any

from unionfs.store.records import ImageRecord
from unionfs.store.store import Store


def history_rows(store: Store, image: ImageRecord) -> list[dict[str, Any]]:
    """Each history step, oldest first, with the layer it made (if any)."""
    config = store.config(image)
    history = config.get("history") or []
    rows: list[dict[str, Any]] = []
    layer = 0
    for step in history:
        empty = bool(step.get("empty_layer"))
        diff_id = None
        if not empty and layer < len(image.diff_ids):
            diff_id = image.diff_ids[layer]
            layer += 1
        rows.append(
            {
                "created": step.get("created"),
                "created_by": step.get("created_by", ""),
                "comment": step.get("comment", ""),
                "empty_layer": empty,
                "layer": diff_id,
                "layer_index": layer if diff_id else None,
                "size": store.layer_info(diff_id).size if diff_id else 0,
            }
        )
    for diff_id in image.diff_ids[layer:]:  # layers the history does not describe
        layer += 1
        rows.append(
            {
                "created": None,
                "created_by": "",
                "comment": "no history entry",
                "empty_layer": False,
                "layer": diff_id,
                "layer_index": layer,
                "size": store.layer_info(diff_id).size,
            }
        )
    return rows
