"""The `unionfs` command: one module per group of commands, and how they print.

- `main`: the `unionfs` group, the exit codes, the fuse-overlayfs argument forms.
- `mount`: `mount` and `umount`.
- `images`: `image import|ls|inspect|history|tag|rm|export` and their aliases.
- `containers`: `create`, `ps`, `rm`, `diff`, `commit`, `df`.
- `inspect`: `explain` and `tree`.
- `events`: `events` and `stats`.
- `common`: the store and `--json` every store command shares; `display`: tables,
  sizes and ages as the commands print them.
"""
