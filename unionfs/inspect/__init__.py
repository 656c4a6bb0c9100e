"""Seeing inside: read-only clients of the filesystem core's merge code.

- `stack`: the layers of an image, container or live mount, named and numbered
  as every command shows them.
- `view`: `StackView`, why a name is where it is (`explain`) and the merged
  tree labelled by layer (`tree`); its answers are the types of `answers`.
- `changes`: a container's changes against its image (`unionfs diff`).
- `history`: an image's history steps lined up with its layers.
- `layerchanges`: what one layer changes over the layers below it, with sizes.
- `layertree`: the merged tree as of a layer, each entry marked by the layer
  that added, changed or removed it (`unionfs browse`).
- `analyze`: an image's efficiency and wasted bytes, as dive defines them.
"""
