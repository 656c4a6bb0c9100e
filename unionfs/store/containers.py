"""Containers: an upper and a work dir over an image's layers, under a name.

``containers/<id>/`` holds ``container.json``, ``upper/`` and ``work/``. A
container keeps its image's diff_ids, so its layers stay when the image is
removed. A daemon that serves a container holds its work dir flock()ed; that
lock is how the store tells that a container is mounted, and how a commit
keeps it from being mounted meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from unionfs.errors import UnionfsError
from unionfs.store.base import StoreBase
from unionfs.store.files import read_json, write_json_atomic
from unionfs.store.mounted import mounts_of_container
from unionfs.store.records import ContainerRecord, now_rfc3339


class ContainersMixin(StoreBase):
    """Container records: creating, finding, removing, and whether one is mounted."""

    def containers(self) -> list[ContainerRecord]:
        if not self.containers_dir.is_dir():
            return []
        out = []
        for p in sorted(self.containers_dir.glob("*/container.json")):
            with contextlib.suppress(FileNotFoundError):
                out.append(ContainerRecord.from_json(read_json(p)))
        return sorted(out, key=lambda c: c.created)

    def resolve_container(self, text: str) -> ContainerRecord:
        found = self.find_container(text)
        if found is None:
            raise UnionfsError(f"no such container: {text}")
        return found

    def find_container(self, text: str) -> ContainerRecord | None:
        containers = self.containers()
        for c in containers:
            if c.name == text:
                return c
        if len(text) >= 3 and all(ch in "0123456789abcdef" for ch in text):
            found = [c for c in containers if c.id.startswith(text)]
            if len(found) > 1:
                raise UnionfsError(f"container ID prefix {text} is ambiguous: give more digits")
            if found:
                return found[0]
        return None

    def create_container(self, image_text: str, name: str | None = None) -> ContainerRecord:
        if name is not None and not _valid_container_name(name):
            raise UnionfsError(
                f"invalid container name {name!r}: letters, digits and _ . - "
                "(starting with a letter or digit)"
            )
        with self.staging("container") as stage, self.locked():
            image = self.resolve_image(image_text)
            taken = {c.name for c in self.containers()}
            if name is None:
                name = _generate_name(taken)
            elif name in taken:
                raise UnionfsError(f"the container name {name} is already in use")
            cid = secrets.token_hex(32)
            box = stage / cid
            box.mkdir(mode=0o700)
            (box / "upper").mkdir(mode=0o755)
            (box / "work").mkdir(mode=0o700)
            record = ContainerRecord(cid, name, image.id, image_text, image.diff_ids, now_rfc3339())
            write_json_atomic(box / "container.json", record.to_json())
            os.rename(box, self.container_path(cid))
            return record

    def container_upper(self, c: ContainerRecord) -> Path:
        return self.container_path(c.id) / "upper"

    def container_work(self, c: ContainerRecord) -> Path:
        return self.container_path(c.id) / "work"

    def container_mounted(self, c: ContainerRecord) -> bool:
        """Whether a daemon serves this container (it holds its work dir locked)."""
        try:
            fd = os.open(self.container_work(c), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def remove_container(self, text: str) -> ContainerRecord:
        with self.locked():
            c = self.resolve_container(text)
            if self.container_mounted(c):
                where = mounts_of_container(c.id)
                raise UnionfsError(
                    f"container {c.name} is mounted"
                    f"{' on ' + where[0] if where else ''}: unmount it first"
                )
            self._discard(self.container_path(c.id))
            self.collect_garbage()
            return c

    @contextlib.contextmanager
    def keep_unmounted(self, c: ContainerRecord, action: str) -> Iterator[None]:
        """Hold `c`'s work dir locked, as its daemon does while mounted: refused
        (with the way out) when it is mounted writable, and no mount starts until
        the block ends. A read-only mount leaves the upper as it is: allowed."""
        try:
            fd = os.open(self.container_work(c), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UnionfsError(f"container {c.name} is damaged: its work dir is missing") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                where = mounts_of_container(c.id)
                if where:
                    raise UnionfsError(
                        f"container {c.name} is mounted on {where[0]}: unmount it "
                        f"(unionfs umount {where[0]}) and {action} again"
                    ) from None
                raise UnionfsError(
                    f"container {c.name} is in use (mounted, or another {action} is running): "
                    f"unmount it and {action} again"
                ) from None
            yield
        finally:
            os.close(fd)  # releases the flock


# -- names ---------------------------------------------------------------------------

_ADJECTIVES = tuple(
    [
        "agile",
        "bold",
        "brave",
        "bright",
        "calm",
        "clever",
        "cosy",
        "crisp",
        "eager",
        "fair",
        "fond",
        "gentle",
        "happy",
        "jolly",
        "keen",
        "kind",
        "lively",
        "lucid",
        "merry",
        "neat",
        "nimble",
        "noble",
        "placid",
        "proud",
        "quick",
        "quiet",
        "sharp",
        "shiny",
        "snug",
        "steady",
        "sunny",
        "swift",
        "tidy",
        "vivid",
        "warm",
        "witty",
        "zen",
    ]
)
_NOUNS = tuple(
    [
        "badger",
        "beaver",
        "bison",
        "crane",
        "dingo",
        "eagle",
        "ferret",
        "finch",
        "gecko",
        "heron",
        "ibis",
        "jackal",
        "koala",
        "lemur",
        "lynx",
        "marmot",
        "mole",
        "newt",
        "otter",
        "panda",
        "pika",
        "quail",
        "raven",
        "seal",
        "shrew",
        "stoat",
        "swan",
        "tapir",
        "toucan",
        "vole",
        "walrus",
        "wombat",
        "yak",
        "zebra",
    ]
)


def _generate_name(taken: set[str]) -> str:
    for _ in range(1000):
        name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
        if name not in taken:
            return name
    return f"container_{secrets.token_hex(4)}"


def _valid_container_name(name: str) -> bool:
    return re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}", name) is not None
