"""Mount configuration: the ``--lower`` form and the fuse-overlayfs ``-o`` form.

``-o lowerdir=A:B:C`` lists layers top first, like overlayfs; a colon inside a
path is written ``\\:`` and a backslash ``\\\\``. Generic mount flags that
mount(8) and mount.fuse3 pass along are accepted; an option nobody knows is an
error, not something to ignore silently.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from unionfs.errors import UsageError

# Flags that libfuse applies to the mount itself.
FUSE_FLAGS = frozenset(
    {
        "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "sync",
        "dirsync", "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime",
        "strictatime", "nostrictatime", "lazytime", "nolazytime",
        "allow_other", "allow_root", "default_permissions", "auto_unmount",
    }
)  # fmt: skip
FUSE_VALUED = frozenset({"fsname", "subtype", "max_read", "context", "fscontext", "defcontext",
                         "rootcontext"})  # fmt: skip
# Flags meant for mount(8) or fstab, not for the filesystem.
IGNORED_FLAGS = frozenset({"defaults", "auto", "noauto", "user", "nouser", "users", "_netdev",
                           "nofail", "owner", "group"})  # fmt: skip
OUR_VALUED = frozenset({"lowerdir", "upperdir", "workdir"})


@dataclass(frozen=True)
class MountConfig:
    """Everything needed to mount: layers top first, and where."""

    lowers: tuple[Path, ...]
    mountpoint: Path
    upper: Path | None = None
    work: Path | None = None
    fuse_options: frozenset[str] = field(default_factory=frozenset)
    cache_timeout: float = 86400.0
    oci_whiteouts: bool = False

    @property
    def writable(self) -> bool:
        return self.upper is not None


def split_escaped(value: str, sep: str) -> list[str]:
    """Split on `sep`, where ``\\<c>`` stands for a literal `c` (sep included)."""
    parts: list[str] = []
    cur: list[str] = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, None)
            if nxt is None:
                raise UsageError(f"trailing backslash in {value!r}")
            cur.append(nxt)
        elif ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def split_option_string(opts: str) -> list[str]:
    """``a,b=c`` -> ["a", "b=c"]; ``\\,`` keeps a literal comma inside a value."""
    out: list[str] = []
    cur: list[str] = []
    chars = iter(opts)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, None)
            cur.append(ch if nxt is None else ch + nxt)
        elif ch == ",":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [o for o in out if o]


def build_config(
    lowers: Iterable[str],
    mountpoint: str,
    option_strings: Iterable[str] = (),
    upper: str | None = None,
    work: str | None = None,
    *,
    oci_whiteouts: bool = False,
) -> MountConfig:
    """Combine ``--lower``/``--upper``/``--work`` with ``-o`` options."""
    layer_list = [str(p) for p in lowers]
    fuse_options: set[str] = set()
    for opts in option_strings:
        for opt in split_option_string(opts):
            key, eq, value = opt.partition("=")
            if key in OUR_VALUED:
                if not eq or not value:
                    raise UsageError(f"option {key}= needs a value")
                if key == "lowerdir":
                    dirs = split_escaped(value, ":")
                    if any(not d for d in dirs):
                        raise UsageError(f"empty directory in lowerdir={value}")
                    layer_list.extend(dirs)
                elif key == "upperdir":
                    upper = split_escaped(value, ",")[0]
                else:
                    work = split_escaped(value, ",")[0]
            elif key in FUSE_VALUED:
                if not eq:
                    raise UsageError(f"option {key}= needs a value")
                fuse_options.add(opt)
            elif key in FUSE_FLAGS and not eq:
                fuse_options.add(opt)
            elif key in IGNORED_FLAGS and not eq:
                continue
            else:
                raise UsageError(f"unknown mount option {opt!r}")
    if not layer_list:
        raise UsageError("no layers: give --lower DIR (top first) or -o lowerdir=TOP:...:BOTTOM")
    if (upper is None) != (work is None):
        raise UsageError("an upper layer needs a work dir and the other way round")
    return MountConfig(
        lowers=tuple(Path(p) for p in layer_list),
        mountpoint=Path(mountpoint),
        upper=Path(upper) if upper is not None else None,
        work=Path(work) if work is not None else None,
        fuse_options=frozenset(fuse_options),
        oci_whiteouts=oci_whiteouts,
    )
