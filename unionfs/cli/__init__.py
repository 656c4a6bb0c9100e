"""The `unionfs` command: one module per group of commands, and how they print."""
