"""The `unionfs` command: one module per group of commands, and how they print.

- `main`: the `unionfs` group, the exit codes, the fuse-overlayfs argument forms.
- `mount`: `mount` and `umount`.
- `images`: `image import|ls|inspect|history|tag|rm|export` and their aliases.
- `containers`: `create`, `ps`, `rm`, `diff`, `commit`, `df`, and the top-level
  `inspect` (containers first, then images).
- `inspect`: `explain` and `tree`.
- `events`: `events` and `stats`.
- `common`: the store, `--json` and the listing options every store command
  shares, and completing image and container names; `display`: tables, sizes and
  ages as the commands print them; `format`: `--format` templates, `-q`,
  `--no-trunc` and `--filter` of the listings.
- `complete`: `completion bash|zsh|fish`; `manpage`: unionfs(1) from the help.
"""
