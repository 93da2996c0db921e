"""Where the sockets may go: never into a directory another user can change,
whatever symlinks lead there, and nothing is created when the place is refused."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from flask_utd import SocketDirError
from flask_utd.agent.lifecycle import start_agent
from flask_utd.agent.lifecycle import stop_agents
from flask_utd.core import sockets

INSTANCE = "4646"
NOBODY = 65534


@pytest.fixture
def place(socket_dir: str) -> Iterator[Path]:
    """A short private directory to build paths in (sockets are limited to 107
    bytes)."""
    yield Path(socket_dir)
    stop_agents()


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make directories of another user")


def files_under(path: Path) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]


def refused(socket_dir: Path, match: str) -> None:
    with pytest.raises(SocketDirError, match=match):
        start_agent(str(socket_dir), INSTANCE, role="process", worker_id=None)


def test_symlink_inside_the_path_into_another_users_directory(place: Path) -> None:
    need_root()
    theirs = place / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    (place / "link").symlink_to(theirs)
    refused(place / "link" / "utd", match="belongs to uid 65534")
    assert list(theirs.iterdir()) == []  # nothing made in their directory
    # Also when the directory in there already looks right (made by us before).
    (theirs / "utd").mkdir(mode=0o700)
    refused(place / "link" / "utd", match="belongs to uid 65534")
    assert files_under(theirs) == []


def test_directory_on_the_way_writable_by_others(place: Path) -> None:
    shared = place / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    refused(shared / "utd", match="chmod go-w")
    assert list(shared.iterdir()) == []
    # Sticky, as /tmp is: others cannot replace what is ours in it.
    os.chmod(shared, 0o1777)
    agent = start_agent(str(shared / "utd"), INSTANCE, role="process", worker_id=None)
    assert stat.S_ISSOCK(os.lstat(agent.path).st_mode)


def test_symlink_inside_the_path_into_our_own_directory(place: Path) -> None:
    mine = place / "mine"
    mine.mkdir(mode=0o700)
    (place / "link").symlink_to(mine)
    agent = start_agent(
        str(place / "link" / "utd"), INSTANCE, role="process", worker_id=None
    )
    assert os.path.realpath(agent.path).startswith(str(mine) + "/")
    assert stat.S_ISSOCK(
        os.lstat(mine / "utd" / INSTANCE / f"{os.getpid()}.sock").st_mode
    )


def test_socket_dir_itself_a_symlink(place: Path) -> None:
    mine = place / "mine"
    mine.mkdir(mode=0o700)
    (place / "utd").symlink_to(mine)
    refused(place / "utd", match="symlink")
    assert list(mine.iterdir()) == []


def test_open_socket_dir_creates_no_socket(place: Path) -> None:
    open_dir = place / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    refused(open_dir, match="chmod 700")
    assert files_under(open_dir) == []
    assert not (open_dir / INSTANCE).exists()


def test_open_instance_dir_creates_no_socket(place: Path) -> None:
    sockets.ensure_private_dir(str(place / "utd"))
    instance = place / "utd" / INSTANCE
    instance.mkdir(mode=0o700)
    os.chmod(instance, 0o755)
    refused(place / "utd", match="chmod 700")
    assert files_under(place / "utd") == []


def test_instance_dir_of_another_user_creates_no_socket(place: Path) -> None:
    need_root()
    sockets.ensure_private_dir(str(place / "utd"))
    instance = place / "utd" / INSTANCE
    instance.mkdir(mode=0o700)
    os.chown(instance, NOBODY, NOBODY)
    refused(place / "utd", match="belongs to uid 65534")
    assert files_under(place / "utd") == []


def test_a_symlink_swapped_in_after_resolution_is_not_followed(place: Path) -> None:
    # The walk opens each directory with O_NOFOLLOW: a component that is a
    # symlink when it is opened (a swap after the path was resolved) stops it.
    mine = place / "mine"
    mine.mkdir(mode=0o700)
    (place / "link").symlink_to(mine)
    with pytest.raises(SocketDirError, match="replaced by a symlink"):
        sockets._walk(str(place / "link"), str(place / "link" / "utd"))
