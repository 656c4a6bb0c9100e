"""Normal users that tests make with useradd and remove after them."""

from __future__ import annotations

import contextlib
import pwd
import secrets
import subprocess
from collections.abc import Iterator


@contextlib.contextmanager
def temporary_user(prefix: str = "ufs") -> Iterator[pwd.struct_passwd]:
    """A system user (no home, no login shell) made for one test; `userdel` runs
    when the block ends, however it ends."""
    name = f"{prefix}{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=True, capture_output=True)
