"""What the pyfuse3 in use can do: a stock one, or one built with the patches
unionfs carries (patches/pyfuse3, applied by scripts/setup). Tests of what those
patches enable are expected failures with a stock pyfuse3, and must pass with
the patched one."""

import pyfuse3
import pyfuse3.asyncio as pyfuse3_asyncio

#: FUSE_FALLOCATE reaches `Operations.fallocate` (0001-fallocate.patch).
FALLOCATE = hasattr(pyfuse3.Operations, "fallocate")
#: `Operations.enable_dont_mask` asks for FUSE_DONT_MASK (0002-dont-mask.patch).
DONT_MASK = hasattr(pyfuse3.Operations, "enable_dont_mask")
#: `Operations.opendir` may return a FileInfo with ``cache_readdir``
#: (0003-opendir-fileinfo-cache-readdir.patch).
CACHE_DIRS = hasattr(pyfuse3.FileInfo, "cache_readdir")
#: `EntryAttributes.reported_ino` (0004-entry-reported-ino.patch).
REPORTED_INO = hasattr(pyfuse3.EntryAttributes, "reported_ino")
#: Workers read the non-blocking FUSE fd before they wait for it, and the
#: asyncio shim has the `checkpoint` they yield at
#: (0006-session-loop-receive-first.patch).
RECEIVES_FIRST = hasattr(pyfuse3_asyncio, "checkpoint")
