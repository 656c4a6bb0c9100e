"""Seeing inside: read-only clients of the filesystem core's merge code.

- `explain`: why a name is where it is: layers, shadowed copies, hiding entries.
- `changes`: a container's changes against its image (`unionfs diff`).
"""
