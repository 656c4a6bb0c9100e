"""Parsing of the mount command's layer lists and -o options."""

from pathlib import Path

import pytest

from unionfs.errors import UsageError
from unionfs.fuse.options import build_config, split_escaped, split_option_string


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
