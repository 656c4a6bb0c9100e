"""Parsing of the mount command's layer lists and -o options."""

from pathlib import Path

import pytest

from unionfs.errors import UsageError
from unionfs.fuse.options import build_config, exec_flags, split_escaped, split_option_string


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
