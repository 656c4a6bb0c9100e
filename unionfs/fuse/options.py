"""Mount configuration: the ``--lower`` form and the fuse-overlayfs ``-o`` form.

``-o lowerdir=A:B:C`` lists layers top first, like overlayfs; a colon inside a
path is written ``\\:`` and a backslash ``\\\\``. Generic mount flags that
mount(8) and mount.fuse3 pass along are accepted; an option nobody knows is an
error, not something to ignore silently.

Every option of fuse-overlayfs 1.x is accepted: those that act here set a
field of `MountConfig` (``volatile``/``fsync=``, ``timeout=``, ``debug``,
``noacl``, ``redirect_dir=``, ``userxattr``, the owner mapping of
``uidmapping=``, ``gidmapping=`` and ``squash_to_*``); the others (``NO_EFFECT_*``) are checked
and then change nothing, as README's table says.

`check_overlaps` refuses layer dirs that contain each other, as overlayfs does.

Setuid bits and device nodes take effect (``suid,dev``) on a writable mount, a
container's root filesystem, which needs them; a read-only mount, made to look
at an image or at layer dirs, is ``nosuid,nodev`` unless ``-o suid``/``-o dev``
asks for them (`exec_flags`), so that mounting an image never hands every local
user its setuid-root programs or its device nodes.
"""

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unionfs.errors import UnionfsError, UsageError
from unionfs.fs.owners import IdMap, IdRange

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
OUR_VALUED = frozenset({"lowerdir", "upperdir", "workdir", "redirect_dir"})
OUR_FLAGS = frozenset({"noacl", "userxattr"})
# fuse-overlayfs's and overlayfs's options that change nothing here (README).
NO_EFFECT_FLAGS = frozenset({"static_nlink"})
NO_EFFECT_VALUED = {
    "threaded": ("0", "1"),
    "index": ("on", "off"),
    "metacopy": ("on", "off"),
    "fast_ino": ("0", "1"),
}


def parse_id_mapping(key: str, value: str) -> tuple[IdRange, ...]:
    """``container:host:size[:container:host:size...]`` (fuse-overlayfs)."""
    parts = value.split(":")
    if len(parts) % 3 or not all(p.isdigit() for p in parts):
        raise UsageError(f"{key}={value}: give CONTAINER:HOST:SIZE[:CONTAINER:HOST:SIZE...]")
    nums = [int(p) for p in parts]
    ranges = tuple(IdRange(*nums[i : i + 3]) for i in range(0, len(nums), 3))
    if any(r.size == 0 for r in ranges):
        raise UsageError(f"{key}={value}: a range of size 0")
    return ranges


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
    #: Rename directories with lower content by writing a redirect (overlayfs
    #: and fuse-overlayfs ``redirect_dir=on``); off: EXDEV, so mv copies.
    redirect_dir: bool = True
    #: Have the kernel enforce the layers' POSIX ACLs (FUSE_POSIX_ACL); off
    #: (fuse-overlayfs ``noacl``): mode bits only, ACLs are plain xattrs.
    acl: bool = True
    #: fsync and fsyncdir reach the upper layer; off (``volatile``,
    #: ``fsync=0``) they return at once, as overlayfs's ``volatile``.
    fsync: bool = True
    #: Let the kernel cache writes (FUSE_WRITEBACK_CACHE, ``writeback=1``):
    #: small writes reach the daemon in batches; the kernel then keeps mtime
    #: itself, so a truncate(2) to the current size leaves it unchanged
    #: (overlayfs on ext4 sets it). Off by default (fuse-overlayfs's is on).
    writeback: bool = False
    #: Log every request (``-o debug``, like ``--debug``).
    debug: bool = False
    #: Write the overlay bookkeeping (opaque, origin) as ``user.overlay.*``
    #: even as root, as overlayfs's ``userxattr``; implies ``redirect_dir=off``
    #: unless ``redirect_dir=on`` is given (then ``user.overlay.redirect``).
    userxattr: bool = False
    #: Read every layer's ``user.containers.override_stat`` and record chown and
    #: chmod there (``xattr_permissions=1|2``; unionfs.fs.overridestat).
    override_stat: bool = False
    #: Owners shown and stored (``uidmapping=``/``gidmapping=``, ``squash_to_*``).
    uids: IdMap = field(default_factory=IdMap)
    gids: IdMap = field(default_factory=IdMap)

    @property
    def writable(self) -> bool:
        return self.upper is not None


def config_to_json(config: MountConfig) -> str:
    """`config` as JSON, for the background daemon (`config_from_json` reads it
    back to an equal config). Paths are str (undecodable bytes as the
    surrogate escapes `Path` holds them in, which JSON keeps)."""

    def encode(value: object) -> object:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, frozenset):
            return sorted(value)
        raise TypeError(f"a mount config holds a {type(value).__name__}")

    return json.dumps(asdict(config), default=encode)


def config_from_json(text: str) -> MountConfig:
    """The `MountConfig` that `config_to_json` wrote as `text`."""
    data = json.loads(text)

    def path(value: str | None) -> Path | None:
        return None if value is None else Path(value)

    def id_map(value: dict[str, Any]) -> IdMap:
        return IdMap(tuple(IdRange(**r) for r in value["ranges"]), value["squash"])

    return MountConfig(
        **{
            **data,
            "lowers": tuple(Path(p) for p in data["lowers"]),
            "mountpoint": Path(data["mountpoint"]),
            "upper": path(data["upper"]),
            "work": path(data["work"]),
            "fuse_options": frozenset(data["fuse_options"]),
            "uids": id_map(data["uids"]),
            "gids": id_map(data["gids"]),
        }
    )


# (allowing flag, refusing flag): what a mount gets unless -o names one of them
_GUARDED_FLAGS = (("suid", "nosuid"), ("dev", "nodev"))


def exec_flags(config: MountConfig) -> frozenset[str]:
    """``suid`` and ``dev`` for a writable mount, ``nosuid`` and ``nodev`` for a
    read-only one; a flag of the pair given with ``-o`` is kept instead."""
    out: set[str] = set()
    for allow, refuse in _GUARDED_FLAGS:
        asked = {allow, refuse} & config.fuse_options
        out |= asked or {allow if config.writable else refuse}
    return frozenset(out)


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
    redirect_dir: bool | None = None
    acl = True
    userxattr = False
    fsync = True
    writeback = False
    debug = False
    override_stat = False
    cache_timeout = MountConfig.cache_timeout
    ranges: dict[str, tuple[IdRange, ...]] = {"uidmapping": (), "gidmapping": ()}
    squash: dict[str, int | None] = {"uid": None, "gid": None}
    for opts in option_strings:
        for opt in split_option_string(opts):
            key, eq, value = opt.partition("=")
            if key in NO_EFFECT_FLAGS and not eq:
                continue
            if key in NO_EFFECT_VALUED:
                if value not in NO_EFFECT_VALUED[key]:
                    choices = " or ".join(NO_EFFECT_VALUED[key])
                    raise UsageError(f"{key}={value}: give {choices}")
                continue
            if key in ("volatile", "debug", "squash_to_root") and not eq:
                if key == "volatile":
                    fsync = False
                elif key == "debug":
                    debug = True
                else:
                    squash = {"uid": 0, "gid": 0}
                continue
            if key == "xattr_permissions":
                if value not in ("0", "1", "2"):
                    raise UsageError(f"xattr_permissions={value}: give 0 or 1 or 2")
                override_stat = value != "0"
                continue
            if key == "fsync":
                if value not in ("0", "1"):
                    raise UsageError(f"fsync={value}: give 0 or 1")
                fsync = value == "1"
                continue
            if key == "writeback":
                if value not in ("0", "1"):
                    raise UsageError(f"writeback={value}: give 0 or 1")
                writeback = value == "1"
                continue
            if key == "timeout":
                try:
                    cache_timeout = float(value)
                except ValueError:
                    cache_timeout = -1.0
                if not 0 <= cache_timeout < float("inf"):
                    raise UsageError(f"timeout={value}: give a number of seconds")
                continue
            if key in ("squash_to_uid", "squash_to_gid"):
                if not value.isdigit():
                    raise UsageError(f"{key}={value}: give a number")
                squash[key[-3:]] = int(value)
                continue
            if key in ranges:
                ranges[key] = parse_id_mapping(key, value)
                continue
            if key in OUR_VALUED:
                if not eq or not value:
                    raise UsageError(f"option {key}= needs a value")
                if key == "lowerdir":
                    dirs = split_escaped(value, ":")
                    if any(not d for d in dirs):
                        raise UsageError(f"empty directory in lowerdir={value}")
                    layer_list.extend(dirs)
                elif key == "redirect_dir":
                    if value not in ("on", "off"):
                        raise UsageError(f"redirect_dir={value}: give on or off")
                    redirect_dir = value == "on"
                elif key == "upperdir":
                    upper = split_escaped(value, ",")[0]
                else:
                    work = split_escaped(value, ",")[0]
            elif key in OUR_FLAGS and not eq:
                if key == "noacl":
                    acl = False
                else:
                    userxattr = True
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
    for allow, refuse in _GUARDED_FLAGS:
        if allow in fuse_options and refuse in fuse_options:
            raise UsageError(f"options {allow} and {refuse} contradict each other")
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
        # overlayfs with userxattr writes no redirects (redirect_dir=nofollow);
        # it refuses an explicit redirect_dir=on, which fuse-overlayfs takes.
        redirect_dir=not userxattr if redirect_dir is None else redirect_dir,
        acl=acl,
        userxattr=userxattr,
        fsync=fsync,
        writeback=writeback,
        debug=debug,
        override_stat=override_stat,
        cache_timeout=cache_timeout,
        uids=IdMap(ranges["uidmapping"], squash["uid"]),
        gids=IdMap(ranges["gidmapping"], squash["gid"]),
    )


def check_overlaps(config: MountConfig) -> None:
    """Refuse an upper, work or lower dir inside (or equal to) another one.

    Kernel overlayfs refuses a lower dir that is, or is inside, another layer dir
    (ELOOP, "overlapping lowerdir path"), and an upper and a work dir that
    contain each other. It mounts an upper or work dir inside a lower, and then
    answers ELOOP for the overlapping directory; unionfs refuses that mount too,
    as it has no such trap. The dirs must exist: they are compared with symlinks
    resolved.
    """
    dirs: list[tuple[str, Path]] = []
    if config.upper is not None and config.work is not None:
        dirs += [("upper dir", config.upper), ("work dir", config.work)]
    dirs += [("lower dir", p) for p in config.lowers]
    resolved = [(what, p, p.resolve()) for what, p in dirs]
    for i, (what_a, a, ra) in enumerate(resolved):
        for what_b, b, rb in resolved[i + 1 :]:
            if ra == rb:
                raise UnionfsError(f"overlapping dirs: {what_b} {b} is {what_a} {a}")
            if ra in rb.parents:
                raise UnionfsError(f"overlapping dirs: {what_b} {b} is inside {what_a} {a}")
            if rb in ra.parents:
                raise UnionfsError(f"overlapping dirs: {what_a} {a} is inside {what_b} {b}")
