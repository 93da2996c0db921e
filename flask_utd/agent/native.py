"""The standard library as it was before gevent patched it: what the agent's own
threads use, so that they stay real OS threads whatever gevent does.

gevent's ``monkey.patch_all()`` turns ``threading.Thread`` into greenlets, locks
and sleeps into calls that switch to the hub, and sockets and selectors into
ones that wait on the hub. The agent must not wait on a hub: the hub is what a
stuck greenlet blocks. Its thread, socket, selector, locks and sleeps come from
here: taken when this module is imported, from :func:`gevent.monkey.get_original`
when gevent is loaded (as gevent's own monitor thread does), else from the
standard library as it is then, before any patching. Patching may come before
or after the agent starts (gunicorn's gevent worker patches after ``post_fork``,
uWSGI's ``gevent-early-monkey-patch`` before the app loads, an app may patch at
the top of its module): what the agent made before patching stays unpatched,
and what it makes later is made from these.

Importing this never imports gevent: it only looks whether gevent is loaded.
"""

from __future__ import annotations

import importlib
import os
import selectors
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any
from typing import Protocol

from . import forks

#: How :class:`threading.Thread` starts its OS thread (a module global that
#: gevent replaces with one that starts a greenlet).
_THREADING_START = (
    "_start_joinable_thread" if sys.version_info >= (3, 13) else "_start_new_thread"
)
_WANTED = (
    ("_thread", "start_new_thread"),
    ("_thread", "allocate_lock"),
    ("_thread", "get_ident"),
    ("time", "sleep"),
    ("selectors", "DefaultSelector"),
    ("socket", "socket"),
    ("threading", _THREADING_START),
)


def _look_up() -> dict[tuple[str, str], Any]:
    # Once, at import: objects made before patching stay unpatched, so what is
    # taken now is the original whatever gevent does later. Asked of gevent at
    # each call instead, the agent once found gevent.monkey half imported (uWSGI
    # patching in its main thread while a dump came in) and stopped.
    monkey = sys.modules.get("gevent.monkey")
    get = getattr(monkey, "get_original", None)
    if get is not None:  # patched already, perhaps: gevent kept the originals
        return {(mod, name): get(mod, name) for mod, name in _WANTED}
    return {
        (mod, name): getattr(importlib.import_module(mod), name)
        for mod, name in _WANTED
    }


_ORIGINAL = _look_up()

#: The ident of the calling OS thread (under gevent, ``threading.get_ident``
#: answers the current greenlet's id).
get_ident: Callable[[], int] = _ORIGINAL["_thread", "get_ident"]


def threading_patched() -> bool:
    """Whether :class:`threading.Thread` now starts greenlets (gevent patched
    :mod:`threading`)."""
    return (
        getattr(threading, _THREADING_START, None)
        is not _ORIGINAL["threading", _THREADING_START]
    )


def allocate_lock() -> Any:
    """A lock that blocks the OS thread, never a greenlet's switch to the hub."""
    return _ORIGINAL["_thread", "allocate_lock"]()


def sleep(seconds: float) -> None:
    """Sleep in this OS thread, not in the hub."""
    _ORIGINAL["time", "sleep"](seconds)


def default_selector() -> selectors.BaseSelector:
    """The platform's selector, not gevent's (which waits on the hub)."""
    selector: selectors.BaseSelector = _ORIGINAL["selectors", "DefaultSelector"]()
    return selector


def _socket_class() -> type[socket.socket]:
    cls: type[socket.socket] = _ORIGINAL["socket", "socket"]
    return cls


def unpatched_socket(sock: socket.socket) -> socket.socket:
    """``sock`` as a standard-library socket: the same file descriptor, taken
    over (``sock`` is detached). A socket made by code that looks
    ``socket.socket`` up after patching (RPyC's server) is gevent's."""
    cls = _socket_class()
    if type(sock) is cls:
        return sock
    return cls(sock.family, sock.type, sock.proto, fileno=sock.detach())


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of standard-library sockets (``socket.socketpair`` wraps
    its ends in whatever ``socket.socket`` is at call time)."""
    import _socket

    cls = _socket_class()
    a, b = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return (
        cls(a.family, a.type, a.proto, fileno=a.detach()),
        cls(b.family, b.type, b.proto, fileno=b.detach()),
    )


def accept(listener: socket.socket) -> tuple[socket.socket, Any]:
    """``listener.accept()``, the new connection a standard-library socket
    (``socket.accept`` wraps it in whatever ``socket.socket`` is at call time)."""
    fd, address = listener._accept()  # type: ignore[attr-defined]
    cls = _socket_class()
    return cls(listener.family, listener.type, listener.proto, fileno=fd), address


class NativeThread(Protocol):
    """What the agent needs of its threads: a :class:`threading.Thread`, or a
    :class:`BareThread` when gevent has patched :mod:`threading`."""

    @property
    def ident(self) -> int | None: ...

    @property
    def name(self) -> str: ...

    @property
    def native_id(self) -> int | None: ...

    @property
    def daemon(self) -> bool: ...

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


class BareThread:
    """An OS thread started with the original ``_thread.start_new_thread``, for
    when :mod:`threading` is patched (its ``Thread.start`` would start a
    greenlet). Daemon by nature: the interpreter does not wait for it.

    :mod:`threading` does not list it; :func:`bare_thread` finds it for dumps.
    """

    daemon = True

    def __init__(self, target: Callable[[], object], name: str) -> None:
        self.name = name
        self.ident: int | None = None
        self.native_id: int | None = None
        self._target = target
        self._started = allocate_lock()
        self._done = allocate_lock()

    def start(self) -> None:
        self._started.acquire()
        self._done.acquire()
        _ORIGINAL["_thread", "start_new_thread"](self._run, ())
        self._started.acquire()  # until ident and native id are known
        self._started.release()

    def _run(self) -> None:
        self.ident = get_ident()
        self.native_id = threading.get_native_id()
        _bare[self.ident] = self
        self._started.release()
        try:
            self._target()
        finally:
            _bare.pop(self.ident, None)
            self._done.release()

    def join(self, timeout: float | None = None) -> None:
        if self._done.acquire(True, -1 if timeout is None else max(0.0, timeout)):
            self._done.release()

    def is_alive(self) -> bool:
        if self._done.acquire(False):
            self._done.release()
            return False
        return self.ident is not None


_bare: dict[int, BareThread] = {}


def start_thread(target: Callable[[], object], name: str) -> NativeThread:
    """Start a daemon OS thread running ``target``, whatever gevent has patched.

    Without patching it is a plain :class:`threading.Thread`, as ever.
    """
    if not threading_patched():
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread
    bare = BareThread(target, name)
    bare.start()
    return bare


def bare_thread(ident: int) -> BareThread | None:
    """The :class:`BareThread` of that ident, if it is one."""
    return _bare.get(ident)


def _main_thread_ident() -> int | None:
    # The main thread is the one whose OS id is the pid (after a fork too: the
    # forking thread is the child's main thread).
    if threading.get_native_id() == os.getpid():
        return get_ident()
    return None


#: The OS ident of the main thread, when this module was imported on it (or
#: renewed after a fork): under gevent, ``threading.main_thread().ident`` is the
#: main greenlet's id.
_main_ident: int | None = _main_thread_ident()


def main_thread_ident() -> int | None:
    """The OS ident of the main thread, if known."""
    return _main_ident


@forks.renew_in_child
def after_fork_in_child() -> None:
    """The child's main thread is the thread that forked; no bare thread of the
    parent runs here."""
    global _main_ident
    _main_ident = _main_thread_ident()
    _bare.clear()


def import_rpyc() -> None:
    """Import RPyC without letting it import gevent.

    ``rpyc.utils.server`` imports gevent, when it is installed, for a
    ``GeventServer`` the agent never uses. An import of gevent that the app did
    not ask for costs tens of milliseconds and changes what libraries that look
    for ``"gevent"`` in :data:`sys.modules` do, and flask-utd must not be the
    one that brings gevent in. While RPyC is imported, ``sys.modules["gevent"]``
    is ``None`` (an import of gevent then fails), then removed again.
    """
    if "rpyc" in sys.modules or "gevent" in sys.modules:
        return
    sys.modules["gevent"] = None  # type: ignore[assignment]
    try:
        import rpyc.utils.server  # noqa: F401
    finally:
        if "gevent" in sys.modules and sys.modules["gevent"] is None:
            del sys.modules["gevent"]
