"""Fixtures shared by the mount tests."""

from collections.abc import Iterator

import pytest

from tests.support.users import fuse_open_to_users


@pytest.fixture
def open_fuse() -> Iterator[None]:
    """/dev/fuse as Debian ships it (0666) for the test's normal users,
    restored when the last test that holds it ends."""
    with fuse_open_to_users():
        yield
