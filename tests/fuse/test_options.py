"""Parsing of the mount command's layer lists and -o options."""

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from unionfs.errors import UsageError
from unionfs.fs.owners import IdMap, IdRange
from unionfs.fuse.options import (
    MountConfig,
    build_config,
    config_from_json,
    config_to_json,
    exec_flags,
    split_escaped,
    split_option_string,
)


def test_lower_flags_keep_order_top_first() -> None:
    cfg = build_config(["/a", "/b"], "/mnt")
    assert cfg.lowers == (Path("/a"), Path("/b"))
    assert cfg.mountpoint == Path("/mnt")
    assert not cfg.writable


def test_lowerdir_option_with_escaped_colons() -> None:
    cfg = build_config([], "/mnt", [r"lowerdir=/x\:1:/y\\z:/w"])
    assert cfg.lowers == (Path("/x:1"), Path("/y\\z"), Path("/w"))


def test_lower_flags_come_before_lowerdir() -> None:
    cfg = build_config(["/top"], "/mnt", ["lowerdir=/mid:/bottom"])
    assert cfg.lowers == (Path("/top"), Path("/mid"), Path("/bottom"))


def test_generic_flags_pass_to_fuse_and_fstab_flags_are_dropped() -> None:
    cfg = build_config([], "/mnt", ["lowerdir=/a,ro,nosuid,noatime,fsname=img", "defaults,_netdev"])
    assert cfg.fuse_options == frozenset({"ro", "nosuid", "noatime", "fsname=img"})


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ("lowerdir=/a,bogus", "unknown mount option 'bogus'"),
        ("lowerdir=/a,ro=1", "unknown mount option 'ro=1'"),
        ("lowerdir=", "option lowerdir= needs a value"),
        ("lowerdir=/a::/b", "empty directory in lowerdir=/a::/b"),
        ("lowerdir=/a,fsname", "option fsname= needs a value"),
        ("lowerdir=/a,upperdir=/u", "an upper layer needs a work dir"),
        ("ro", "no layers"),
    ],
)
def test_bad_options(opts: str, message: str) -> None:
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(")):
        build_config([], "/mnt", [opts])


def test_split_helpers() -> None:
    assert split_escaped(r"a\:b:c", ":") == ["a:b", "c"]
    assert split_option_string(r"a,b=c\,d,,e") == ["a", r"b=c\,d", "e"]
    with pytest.raises(UsageError):
        split_escaped("a\\", ":")


def test_noacl_turns_acl_enforcement_off() -> None:
    assert build_config([], "/mnt", ["lowerdir=/a"]).acl
    assert not build_config([], "/mnt", ["lowerdir=/a,noacl"]).acl
    with pytest.raises(UsageError, match=r"^unknown mount option 'noacl=1'"):
        build_config([], "/mnt", ["lowerdir=/a,noacl=1"])


def test_redirect_dir_option() -> None:
    """fuse-overlayfs's ``redirect_dir``: on by default, off keeps EXDEV."""
    assert build_config(["/l"], "/m").redirect_dir
    assert build_config(["/l"], "/m", ["redirect_dir=on"]).redirect_dir
    assert not build_config(["/l"], "/m", ["redirect_dir=off"]).redirect_dir
    with pytest.raises(UsageError, match="redirect_dir=follow: give on or off"):
        build_config(["/l"], "/m", ["redirect_dir=follow"])
    with pytest.raises(UsageError, match="needs a value"):
        build_config(["/l"], "/m", ["redirect_dir"])


@pytest.mark.parametrize(
    ("upper", "opts", "flags"),
    [
        (False, "", {"nosuid", "nodev"}),  # looking at layers or an image
        (True, "", {"suid", "dev"}),  # a container's root filesystem
        (False, "suid,dev", {"suid", "dev"}),
        (False, "suid", {"suid", "nodev"}),
        (True, "nosuid,nodev", {"nosuid", "nodev"}),
    ],
)
def test_suid_and_dev_follow_writability_unless_asked(
    upper: bool, opts: str, flags: set[str]
) -> None:
    cfg = build_config(["/a"], "/mnt", [opts], "/u" if upper else None, "/w" if upper else None)
    assert exec_flags(cfg) == flags


def test_a_flag_and_its_negation_contradict() -> None:
    with pytest.raises(UsageError, match=r"^options suid and nosuid contradict each other$"):
        build_config(["/a"], "/mnt", ["suid,nosuid"])


def test_podman_option_string_with_empty_option_and_trailing_comma() -> None:
    cfg = build_config([], "/m", ["lowerdir=/l/A:/l/B,upperdir=/u,workdir=/w,,volatile,"])
    assert cfg.lowers == (Path("/l/A"), Path("/l/B"))
    assert cfg.writable
    assert not cfg.fsync


@pytest.mark.parametrize(
    "opt",
    [
        "noacl", "static_nlink", "userxattr", "squash_to_root", "squash_to_uid=1",
        "squash_to_gid=2", "uidmapping=0:1000:1", "gidmapping=0:1000:1:1:100000:65536",
        "xattr_permissions=0", "xattr_permissions=1", "xattr_permissions=2", "index=off",
        "index=on", "redirect_dir=off", "metacopy=off", "metacopy=on", "timeout=0",
        "timeout=1.5", "threaded=0", "threaded=1", "debug", "fsync=0", "fsync=1", "volatile",
        "fast_ino=1", "writeback=0", "writeback=1",
    ],
)  # fmt: skip
def test_every_fuse_overlayfs_option_is_accepted(opt: str) -> None:
    build_config([], "/m", [f"lowerdir=/a,{opt}"])


def test_options_that_act() -> None:
    cfg = build_config([], "/m", ["lowerdir=/a,fsync=0,timeout=2.5,debug,writeback=1"])
    assert (cfg.fsync, cfg.cache_timeout, cfg.debug, cfg.writeback) == (False, 2.5, True, True)
    default = build_config([], "/m", ["lowerdir=/a"])
    assert (default.fsync, default.debug, default.writeback) == (True, False, False)
    assert default.uids.identity and default.gids.identity
    root = build_config([], "/m", ["lowerdir=/a,squash_to_root"])
    assert (root.uids.shown(1234), root.gids.shown(99)) == (0, 0)
    sq = build_config([], "/m", ["lowerdir=/a,squash_to_uid=7"])
    assert (sq.uids.shown(1), sq.gids.shown(1)) == (7, 1)


def test_id_mapping_both_ways() -> None:
    cfg = build_config([], "/m", ["lowerdir=/a,uidmapping=0:1000:1:1:100000:65536"])
    m = cfg.uids
    assert [m.shown(h) for h in (1000, 100000, 165535, 165536, 0)] == [0, 1, 65536, 65534, 65534]
    assert [m.stored(c) for c in (0, 1, 65536, 65537)] == [1000, 100000, 165535, None]
    assert cfg.gids.identity


@pytest.mark.parametrize(
    ("opt", "message"),
    [
        ("fsync=2", "fsync=2: give 0 or 1"),
        ("writeback=2", "writeback=2: give 0 or 1"),
        ("timeout=soon", "timeout=soon: give a number of seconds"),
        ("timeout=-1", "timeout=-1: give a number of seconds"),
        ("index=maybe", "index=maybe: give on or off"),
        ("xattr_permissions=3", "xattr_permissions=3: give 0 or 1 or 2"),
        ("uidmapping=0:1000", "uidmapping=0:1000: give CONTAINER:HOST:SIZE"),
        ("gidmapping=0:x:1", "gidmapping=0:x:1: give CONTAINER:HOST:SIZE"),
        ("uidmapping=0:1:0", "uidmapping=0:1:0: a range of size 0"),
        ("squash_to_uid=me", "squash_to_uid=me: give a number"),
        ("volatile=1", "unknown mount option 'volatile=1'"),
        ("nosuchoption", "unknown mount option 'nosuchoption'"),
    ],
)
def test_bad_fuse_overlayfs_values(opt: str, message: str) -> None:
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(")):
        build_config([], "/m", [f"lowerdir=/a,{opt}"])


def test_userxattr_means_no_redirects_unless_asked() -> None:
    """As overlayfs (``redirect_dir=nofollow`` with ``userxattr``); an explicit
    ``redirect_dir=on`` is kept, as fuse-overlayfs keeps it."""
    cfg = build_config([], "/m", ["lowerdir=/a,userxattr"])
    assert cfg.userxattr and not cfg.redirect_dir
    cfg = build_config([], "/m", ["lowerdir=/a,redirect_dir=on,userxattr"])
    assert cfg.userxattr and cfg.redirect_dir
    cfg = build_config([], "/m", ["lowerdir=/a"])
    assert not cfg.userxattr and cfg.redirect_dir


def test_a_config_survives_its_way_to_the_daemon_as_json() -> None:
    """The background daemon gets its config as JSON: every field, with values
    away from the defaults (a new field that JSON cannot carry fails here), and
    a path that is not UTF-8."""
    odd = Path(os.fsdecode(b"/layers/caf\xe9"))
    cfg = MountConfig(
        lowers=(odd, Path("/b")),
        mountpoint=Path("/mnt/x y"),
        upper=Path("/u"),
        work=Path("/w"),
        fuse_options=frozenset({"fsname=img", "noatime"}),
        uids=IdMap((IdRange(0, 100000, 65536), IdRange(65536, 5, 1))),
        gids=IdMap(squash=7),
    )
    flipped: dict[str, Any] = {}
    for f in dataclasses.fields(MountConfig):
        if isinstance(f.default, (bool, float)):
            flipped[f.name] = not f.default if isinstance(f.default, bool) else f.default + 1.5
    cfg = dataclasses.replace(cfg, **flipped)
    back = config_from_json(config_to_json(cfg))
    assert back == cfg
    assert os.fsencode(back.lowers[0]) == b"/layers/caf\xe9"
