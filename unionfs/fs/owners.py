"""Owner mapping: the ids a mount shows against the ids its layers hold.

fuse-overlayfs's ``uidmapping=``/``gidmapping=`` (ranges
``container:host:size``) and ``squash_to_*`` options, FUSE-free: the daemon
translates every owner it reports with `IdMap.shown` and every owner it writes
(chown, a new entry's creator) with `IdMap.stored`.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class IdRange:
    """One range of a fuse-overlayfs ``uidmapping=``/``gidmapping=``: ids
    ``inside .. inside+size-1`` as the mount shows them are ``outside ..`` on disk."""

    inside: int
    outside: int
    size: int


#: The id shown for an owner on disk that no range maps (the kernel's overflow id).
OVERFLOW_ID = 65534


@dataclass(frozen=True)
class IdMap:
    """fuse-overlayfs's dynamic owner mapping plus its squash options.

    Invariant: with no ranges and no squash an id is shown and stored as is.
    `shown` turns a disk owner into what stat reports (unmapped: OVERFLOW_ID;
    squash wins over everything); `stored` turns an owner given through the
    mount (chown, a creating caller) into the one written (unmapped: EINVAL,
    reported as None).
    """

    ranges: tuple[IdRange, ...] = ()
    squash: int | None = None

    @property
    def identity(self) -> bool:
        return not self.ranges and self.squash is None

    def shown(self, outside: int) -> int:
        if self.squash is not None:
            return self.squash
        if not self.ranges:
            return outside
        for r in self.ranges:
            if r.outside <= outside < r.outside + r.size:
                return outside - r.outside + r.inside
        return OVERFLOW_ID

    def stored(self, inside: int) -> int | None:
        if not self.ranges:
            return inside
        for r in self.ranges:
            if r.inside <= inside < r.inside + r.size:
                return inside - r.inside + r.outside
        return None


#: Owners shown and stored as they are.
IDENTITY = IdMap()
