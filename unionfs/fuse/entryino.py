"""The inode number a FUSE entry reports, apart from the inode it names.

A FUSE entry carries two numbers: the node id, by which the kernel names the
inode in every later request (open, write, setattr, ...), and ``attr.ino``,
which is what ``stat`` and ``readdir`` show as ``st_ino``/``d_ino``. pyfuse3's
`EntryAttributes.st_ino` sets both to one value. unionfs needs them apart for
the names of a lower hard-link group on a writable mount: one `st_ino` for the
whole group (as overlayfs shows it, so ``cp -a`` and ``tar`` keep the link),
and one node id per name (so that a write through one name copies up that name
only, as overlayfs without ``index=on`` does).

A pyfuse3 built with patches/pyfuse3 has `EntryAttributes.reported_ino` for
this (`API`). With a stock one, `set_reported_ino` writes ``attr.st_ino`` of
the ``fuse_entry_param`` that an `EntryAttributes` wraps (libfuse's ``{ino;
generation; struct stat attr; ...}``, the only state of that Cython object).
`SUPPORTED` says whether either works on this build (the layout is verified at
import); where neither does, the group shows one `st_ino` per name, and
nothing is written.
"""

import ctypes
import logging
import sys

import pyfuse3

log = logging.getLogger(__name__)

# PyObject header, then fuse_entry_param: ino (8), generation (8), struct stat,
# whose st_ino follows st_dev (8) on every Linux ABI.
_NODEID = 2 * ctypes.sizeof(ctypes.c_void_p)
_ATTR_INO = _NODEID + 16 + 8


def _verify() -> bool:
    if sys.implementation.name != "cpython" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    probe = pyfuse3.EntryAttributes()
    probe.st_ino = 0x1122334455667788
    probe.generation = 0x0102030405060708
    base = id(probe)
    nodeid = ctypes.c_uint64.from_address(base + _NODEID).value
    generation = ctypes.c_uint64.from_address(base + _NODEID + 8).value
    attr_ino = ctypes.c_uint64.from_address(base + _ATTR_INO).value
    return (nodeid, generation, attr_ino) == (
        0x1122334455667788,
        0x0102030405060708,
        0x1122334455667788,
    )


#: pyfuse3 sets the reported number itself (patches/pyfuse3).
API = hasattr(pyfuse3.EntryAttributes, "reported_ino")
SUPPORTED = API or _verify()
if not SUPPORTED:
    log.warning(
        "pyfuse3's entry layout is not the expected one: lower hard links show one inode per name"
    )


def set_reported_ino(attr: pyfuse3.EntryAttributes, ino: int) -> None:
    """Make `attr` report `ino` as ``st_ino`` while naming the node its
    `st_ino` was set to (set that first)."""
    if API:
        attr.reported_ino = ino
    elif SUPPORTED:
        ctypes.c_uint64.from_address(id(attr) + _ATTR_INO).value = ino
