"""Where the agents' sockets live, and who may connect to them.

Layout::

    <socket dir>/                 0700, owned by the server's uid
        <instance>/               0700, one per server instance (its master's pid)
            <pid>.sock            0600, one per process that runs an agent
            <pid>.unsafe          a note left by a process that cannot run an agent
                                  safely

This module imports neither Flask nor RPyC: the lean CLI path uses it.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from typing import NamedTuple

from .errors import SocketDirError

SOCKET_SUFFIX = ".sock"
UNSAFE_SUFFIX = ".unsafe"
#: The note the master's watchdog leaves when it has reported a worker through
#: faulthandler (:mod:`flask_utd.agent.watchdog`).
STALLED_SUFFIX = ".stalled"
#: The master's watchdog's inbox: a datagram socket its workers' requests send
#: a notice to when they wake their own watchdog.
WATCHDOG_SUFFIX = ".watchdog"
_PEERCRED = struct.Struct("3i")


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def ensure_private_dir(path: str) -> str:
    """Create ``path`` with mode 0700, or check that an existing one is private.

    The directory is created with its final mode (``mkdir(path, 0o700)``), so it is
    never more open than that. An existing one must be a real directory (not a
    symlink), owned by this user, with no group or other permissions.

    Every directory on the way there must belong to this user or to root and be
    writable by no one else (unless it is sticky, as ``/tmp`` is): whoever can
    write a directory can replace what is in it. The way is walked one directory
    at a time without following symlinks (``O_NOFOLLOW``); a symlink in the path
    as given is resolved first, and then held to the same rule, so it cannot
    lead into someone else's directory. Missing directories on the way are
    created with mode 0700.

    :raises SocketDirError: the path cannot be used; the message says what to do.
    """
    path = os.path.abspath(path)
    if os.path.islink(path):
        raise SocketDirError(
            f"the socket directory {path!r} is a symlink; remove it or set"
            " UTD_SOCKET_DIR to the directory it points to."
        )
    real = os.path.realpath(path)
    parent, leaf = os.path.split(real)
    fd = _walk(parent, path)
    try:
        try:
            os.mkdir(leaf, 0o700, dir_fd=fd)
        except FileExistsError:
            pass
        except OSError as err:
            raise SocketDirError(
                f"cannot create the socket directory {path!r} ({err.strerror});"
                " set UTD_SOCKET_DIR to a directory this user can write."
            ) from err
        try:
            leaf_fd = os.open(leaf, _DIR_FLAGS, dir_fd=fd)
        except OSError as err:
            raise SocketDirError(
                f"the socket directory {path!r} is not a directory (or is a"
                " symlink); remove it or set UTD_SOCKET_DIR to another path."
            ) from err
        try:
            _check_private(os.fstat(leaf_fd), path)
        finally:
            os.close(leaf_fd)
    finally:
        os.close(fd)
    return path


def _walk(directory: str, wanted: str) -> int:
    """Open ``directory`` (a real, absolute path) one component at a time, never
    following a symlink, creating missing components with mode 0700, and check
    each on the way (:func:`_check_on_the_way`). Returns an open descriptor."""
    fd = os.open("/", _DIR_FLAGS)
    here = "/"
    try:
        _check_on_the_way(os.fstat(fd), here, wanted)
        for name in directory.strip("/").split("/"):
            if not name:
                continue
            here = os.path.join(here, name)
            try:
                next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                    next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as err:
                    raise SocketDirError(
                        f"cannot create {here!r} for the agent sockets"
                        f" ({err.strerror}); set UTD_SOCKET_DIR to a directory"
                        " this user can write."
                    ) from err
            except OSError as err:
                # ELOOP: a symlink appeared since the path was resolved.
                raise SocketDirError(
                    f"{here!r}, on the way to the socket directory {wanted!r}, is"
                    f" not a directory or was replaced by a symlink ({err.strerror})."
                ) from err
            os.close(fd)
            fd = next_fd
            _check_on_the_way(os.fstat(fd), here, wanted)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_on_the_way(st: os.stat_result, here: str, wanted: str) -> None:
    if st.st_uid not in (0, os.geteuid()):
        raise SocketDirError(
            f"{here!r}, on the way to the socket directory {wanted!r}, belongs to"
            f" uid {st.st_uid}, who could replace the sockets in it; set"
            " UTD_SOCKET_DIR to a path whose directories belong to this user or"
            " root."
        )
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise SocketDirError(
            f"{here!r}, on the way to the socket directory {wanted!r}, has mode"
            f" {stat.S_IMODE(st.st_mode):o}: others can replace what is in it. Run"
            f" `chmod go-w {here}` (or `chmod +t`), or set UTD_SOCKET_DIR to"
            " another path."
        )


def _check_private(st: os.stat_result, path: str) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise SocketDirError(
            f"the socket directory {path!r} is not a directory (or is a symlink);"
            " remove it or set UTD_SOCKET_DIR to another path."
        )
    if st.st_uid != os.geteuid():
        raise SocketDirError(
            f"the socket directory {path!r} belongs to uid {st.st_uid}, not to this"
            f" user (uid {os.geteuid()}); set UTD_SOCKET_DIR to a directory of yours."
        )
    if st.st_mode & 0o077:
        raise SocketDirError(
            f"the socket directory {path!r} has mode {stat.S_IMODE(st.st_mode):o};"
            f" it must be private: run `chmod 700 {path}` or remove it."
        )


def check_private_dir(path: str) -> None:
    """Raise :class:`SocketDirError` unless ``path`` is a private directory of ours
    (the directory itself, not the way to it: see :func:`ensure_private_dir`)."""
    try:
        st = os.lstat(path)
    except OSError as err:
        raise SocketDirError(
            f"the socket directory {path!r} cannot be read ({err.strerror})."
        ) from err
    if stat.S_ISLNK(st.st_mode):
        raise SocketDirError(
            f"the socket directory {path!r} is not a directory (or is a symlink);"
            " remove it or set UTD_SOCKET_DIR to another path."
        )
    _check_private(st, path)


def instance_dir(socket_dir: str, instance: str) -> str:
    """The directory of one server instance inside ``socket_dir``."""
    return os.path.join(socket_dir, instance)


def socket_path(socket_dir: str, instance: str, pid: int) -> str:
    """The socket of process ``pid`` of ``instance``."""
    return os.path.join(socket_dir, instance, f"{pid}{SOCKET_SUFFIX}")


def watchdog_inbox_path(directory: str, pid: int) -> str:
    """The inbox of the master ``pid``'s watchdog, in an instance directory."""
    return os.path.join(directory, f"{pid}{WATCHDOG_SUFFIX}")


def stalled_note_path(directory: str, pid: int) -> str:
    """The master's note that it reported worker ``pid`` through faulthandler,
    in an instance directory."""
    return os.path.join(directory, f"{pid}{STALLED_SUFFIX}")


def unsafe_note_path(socket_dir: str, instance: str, pid: int) -> str:
    """The note a process leaves when it cannot run an agent safely."""
    return os.path.join(socket_dir, instance, f"{pid}{UNSAFE_SUFFIX}")


class Entry(NamedTuple):
    """One process found in an instance directory.

    A named tuple, not a dataclass: :mod:`dataclasses` costs the lean command
    more to import than this whole module.
    """

    pid: int
    path: str
    #: ``"socket"`` for an agent socket, ``"unsafe"`` for a note.
    kind: str


def _user(uid: int) -> tuple[str, str]:
    """A user's name (or ``uid N``), and how a message names them."""
    import pwd  # only for this message

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}", f"uid {uid}"
    return name, f"{name} (uid {uid})"


def unreadable(path: str) -> SocketDirError:
    """The error for a socket directory this user may not read: which directory
    stops it (``path`` or one on the way), whose it is, and what to do."""
    path = os.path.abspath(path)
    here = path
    while True:
        try:
            st = os.stat(here)
            break
        except PermissionError:
            here = os.path.dirname(here)
    which = "it" if here == path else f"{here}, on the way to it,"
    name, owner = _user(st.st_uid)
    if st.st_uid == 0:
        what = "run this command as root (with sudo)"
    else:
        sudo = name if name != f"uid {st.st_uid}" else f"'#{st.st_uid}'"
        what = f"run this command as {name} or as root (sudo -u {sudo} ...)"
    return SocketDirError(
        f"cannot read the socket directory {path}: {which} belongs to {owner},"
        f" mode {stat.S_IMODE(st.st_mode):o}, and this command runs as"
        f" {_user(os.geteuid())[1]}. The agents answer only the server's user and"
        f" root: {what}."
    )


def list_entries(directory: str) -> list[Entry]:
    """The agent sockets and unsafe notes in one instance directory.

    :raises SocketDirError: this user may not read it (:func:`unreadable`).
    """
    entries = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except PermissionError:
        raise unreadable(directory) from None
    for name in names:
        base, ext = os.path.splitext(name)
        if not base.isdigit():
            continue
        if ext == SOCKET_SUFFIX:
            entries.append(Entry(int(base), os.path.join(directory, name), "socket"))
        elif ext == UNSAFE_SUFFIX:
            entries.append(Entry(int(base), os.path.join(directory, name), "unsafe"))
    entries.sort(key=lambda e: e.pid)
    return entries


def pid_alive(pid: int) -> bool:
    """A hint only (PIDs are reused): whether a process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_children(pid: int) -> set[int]:
    """The PIDs of the live (not zombie) children of ``pid``, from ``/proc``."""
    found: set[int] = set()
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        # One read, without a file object: this reads every process's stat, and
        # a file object costs more than the read (docs/performance.md).
        try:
            fd = os.open(f"/proc/{name}/stat", os.O_RDONLY)
        except OSError:
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:
            continue
        finally:
            os.close(fd)
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] not in (b"Z", b"X"):
            found.add(int(name))
    return found


def list_instances(socket_dir: str) -> list[str]:
    """The instance directories in ``socket_dir`` whose owner process still exists.

    The directory of an instance whose master is gone is cleaned up on the way
    (:func:`prune_gone_instances`).

    :raises SocketDirError: this user may not read it (:func:`unreadable`).
    """
    return _scan(socket_dir, keep=None)


def prune_gone_instances(socket_dir: str, keep: str) -> None:
    """Clean up the directories of instances whose owner process is gone, except
    ``keep`` (the instance of the caller, which is alive whatever its owner).

    Their stale sockets and the other files of processes that are gone go, then
    each directory if that leaves it empty. A uWSGI master runs no ``atexit``
    handler, and no Python code at all when it exits, so nothing else removes
    them: every agent that starts, and every collection, passes here.
    """
    _scan(socket_dir, keep=keep)


def _scan(socket_dir: str, keep: str | None) -> list[str]:
    try:
        names = sorted(os.listdir(socket_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except PermissionError:
        raise unreadable(socket_dir) from None
    live = []
    for name in names:
        if not name.isdigit():
            continue
        if name == keep or pid_alive(int(name)):
            live.append(name)
        else:
            _prune(os.path.join(socket_dir, name))
    return live


def _prune(directory: str) -> None:
    """Remove what the processes of a dead instance left: a socket nobody listens
    on, and every other ``<pid>.*`` file (faulthandler file, note, a socket being
    bound) of a pid that is gone; then the directory, if empty."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        pid, dot, _ = name.partition(".")
        if not pid.isdigit() or not dot:
            continue  # not ours: the directory stays
        path = os.path.join(directory, name)
        if name == f"{pid}{SOCKET_SUFFIX}":
            remove_if_stale(path)
        elif not pid_alive(int(pid)):
            try:
                os.unlink(path)
            except OSError:
                pass
    try:
        os.rmdir(directory)
    except OSError:
        pass  # not empty: a process of it still listens


def remove_if_stale(path: str) -> bool:
    """Remove a socket file if nobody listens on it; return whether it was removed.

    A refused connection is the proof that the process that bound it is gone: a
    PID alone could have been reused.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.2)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass
    except OSError:
        return False
    else:
        return False
    finally:
        probe.close()
    try:
        os.unlink(path)
    except OSError as err:
        if err.errno != errno.ENOENT:
            return False
    return True


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """The pid, uid and gid of the process at the other end of a connected Unix
    socket (``SO_PEERCRED``: as they were when it connected)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return int(pid), int(uid), int(gid)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket."""
    return peer_credentials(sock)[1]


def uid_allowed(uid: int) -> bool:
    """Whether a peer of ``uid`` may connect: this process's uid, or root."""
    return uid == os.geteuid() or uid == 0


def peer_allowed(sock: socket.socket) -> bool:
    """Whether the peer runs as this process's uid, or as root."""
    return uid_allowed(peer_uid(sock))
