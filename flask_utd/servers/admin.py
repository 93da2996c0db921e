"""The admin listener: the uWSGI master (or gunicorn's arbiter) serves ``/_utd/``
on its own address.

A URL served by the app's workers fails exactly when all of them are stuck. With
``UTD_ADMIN_LISTEN`` set, the master serves the blueprint's routes (and nothing
else) from threads of its own, on that address.

It must answer when nothing else does, so no client can hold it up. One thread,
``utd-admin``, accepts every connection and reads each request's head
(request line and headers) from all of them at once, in a selector, each within
:data:`HEAD_TIMEOUT`; a connection that is slow, idle or too big costs a file
descriptor, never a thread. A complete head goes to one of at most
:data:`MAX_HANDLERS` threads, ``utd-admin-request``, which runs werkzeug's
request handler on it: the head is all it reads (the routes take no request
body), and each write to the client has :data:`CLIENT_TIMEOUT`.

The threads and the sockets belong to the master: a forked worker closes its
copies at once (:func:`after_fork_in_child`). It runs only where uWSGI calls
Python's fork hooks (``py-call-uwsgi-fork-hooks``); without them, a worker forked
while one of these threads holds the GIL deadlocks (DESIGN.md, hazard 1b).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import NotFound
from werkzeug.serving import BaseWSGIServer
from werkzeug.serving import WSGIRequestHandler

from ..agent import forks
from ..core import marks

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment
    from flask import Flask

log = logging.getLogger("flask_utd")

#: Name of the admin listener's thread, which accepts and reads requests.
ADMIN_THREAD_NAME = "utd-admin"
#: Name of the threads that answer complete requests.
HANDLER_THREAD_NAME = "utd-admin-request"
#: How long a client may take to send its request's head, from its connection.
HEAD_TIMEOUT = 10.0
#: How long one write of an answer may wait for a client that does not read.
CLIENT_TIMEOUT = 10.0
#: The WSGI environ key, true in a request that the admin listener serves: its
#: ``/_utd/metrics`` needs no token there (a client cannot set an environ key
#: that has no ``HTTP_`` prefix).
SERVED_BY_ADMIN = "flask_utd.admin_listener"
#: The longest request head; a signed dump URL needs well under 1 KiB.
MAX_HEAD = 16 * 1024
#: Most connections whose head is still coming; past it, the oldest is closed.
MAX_PENDING = 256
#: Most requests answered at once, one thread each.
MAX_HANDLERS = 4
#: Most complete requests waiting for a free thread; past it, ``503``.
MAX_QUEUED = 64


def only_utd(app: Flask) -> WSGIApplication:
    """A WSGI app that passes to ``app`` only the URLs of ``utd_bp``: 404 otherwise."""

    def wsgi(
        environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        try:
            endpoint, _ = app.url_map.bind_to_environ(environ).match()
        except HTTPException:
            endpoint = ""
        if not str(endpoint).startswith("utd."):
            return NotFound()(environ, start_response)
        environ[SERVED_BY_ADMIN] = True
        return app.wsgi_app(environ, start_response)

    return wsgi


class _AdminHandler(WSGIRequestHandler):
    """werkzeug's request handler, on a head the listener's loop has read: it
    reads nothing from the client, and logs requests without their query
    string, which holds the token."""

    # One request per connection: a kept-alive connection would hold a thread.
    protocol_version = "HTTP/1.0"
    timeout = CLIENT_TIMEOUT

    def __init__(
        self, request: socket.socket, client_address: Any, server: Any, head: bytes
    ) -> None:
        self.head = head
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile = io.BytesIO(self.head)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = self.path.split("?", 1)[0]
        self.log("info", '"%s %s" %s %s', self.command, path, code, size)


#: What ``accept()`` fails with when this process or the system is out of room.
_OUT_OF_ROOM = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


@dataclass
class _Pending:
    """A connection whose request head is still coming."""

    address: Any
    deadline: float
    head: bytearray = field(default_factory=bytearray)


def _end_of_head(data: bytes | bytearray) -> int:
    """Where the head ends in ``data`` (after its blank line), or -1."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    ends = [i + n for i, n in ((crlf, 4), (lf, 2)) if i >= 0]
    return min(ends) if ends else -1


def _has_body(head: bytes) -> bool:
    for line in head.splitlines()[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" or (
            name == b"content-length" and value.strip() != b"0"
        ):
            return True
    return False


def _refuse(conn: socket.socket, status: str) -> None:
    """Answer ``status`` if the client takes it at once, and close."""
    try:
        head = f"HTTP/1.0 {status}\r\nContent-Length: 0\r\nConnection: close\r\n"
        conn.send(head.encode() + b"\r\n")
    except OSError:
        pass
    conn.close()


def _close_copy(sock: socket.socket | None) -> None:
    """Close this process's descriptor of ``sock`` at once, whatever else of
    Python still refers to it (a forked child's copy)."""
    if sock is None:
        return
    try:
        fd = sock.fileno()
        if fd >= 0:
            sock.detach()
            os.close(fd)
    except OSError:
        pass


class _AdminServer(BaseWSGIServer):
    """werkzeug's server, with a loop of its own in place of socketserver's:
    every connection in one selector until its head is complete, then a thread
    of a bounded few to answer it (see the module's docstring)."""

    multithread = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Made first: werkzeug's __init__ calls server_close().
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopped = threading.Event()
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._pending: dict[socket.socket, _Pending] = {}
        self._queue: deque[tuple[socket.socket, Any, bytes]] = deque()
        self._answering: set[socket.socket] = set()
        self._handlers = 0
        self._stopping = False
        self._selector: selectors.BaseSelector | None = None

    def serve_forever(self, poll_interval: float = 0) -> None:
        """Serve until :meth:`shutdown`; ``poll_interval`` is unused (a
        wake-up socket ends the wait)."""
        selector = self._selector = selectors.DefaultSelector()
        self.socket.setblocking(False)
        selector.register(self.socket, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping:
                for key, _ in selector.select(self._wait()):
                    if key.fileobj is self.socket:
                        self._accept(selector)
                    elif key.fileobj is self._wake_r:
                        self._wake_r.recv(64)
                    else:
                        assert isinstance(key.fileobj, socket.socket)
                        self._read(selector, key.fileobj)
                self._expire(selector)
        finally:
            for conn in list(self._pending):
                conn.close()
            self._pending.clear()
            with self._lock:
                while self._queue:
                    self._queue.popleft()[0].close()
            selector.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait until it has."""
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._stopped.wait()

    def server_close(self) -> None:
        """Close the listening socket (werkzeug also calls this on a socket it
        replaces); the wake-up pair closes once the loop has stopped."""
        super().server_close()
        if self._stopped.is_set():
            self._wake_r.close()
            self._wake_w.close()

    def _wait(self) -> float | None:
        if not self._pending:
            return None
        first = next(iter(self._pending.values()))  # the oldest: deadlines in order
        return max(0.0, first.deadline - time.monotonic())

    def _accept(self, selector: selectors.BaseSelector) -> None:
        for _ in range(64):  # then let the others be read too
            try:
                conn, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno not in _OUT_OF_ROOM:
                    return  # this client gave up while it was accepted
                # Make room for the next client; with none to close, wait a
                # little rather than spin on a socket that stays readable.
                if self._pending:
                    self._drop_oldest(selector)
                else:
                    time.sleep(0.1)
                return
            conn.setblocking(False)
            self._pending[conn] = _Pending(address, time.monotonic() + HEAD_TIMEOUT)
            selector.register(conn, selectors.EVENT_READ)
            if len(self._pending) > MAX_PENDING:
                self._drop_oldest(selector)

    def _drop_oldest(self, selector: selectors.BaseSelector) -> None:
        if self._pending:
            conn = next(iter(self._pending))
            self._forget(selector, conn)
            conn.close()

    def _forget(self, selector: selectors.BaseSelector, conn: socket.socket) -> None:
        del self._pending[conn]
        selector.unregister(conn)

    def _expire(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        while self._pending:
            conn, pending = next(iter(self._pending.items()))
            if pending.deadline > now:
                return
            self._forget(selector, conn)
            _refuse(conn, "408 Request Timeout")

    def _read(self, selector: selectors.BaseSelector, conn: socket.socket) -> None:
        pending = self._pending[conn]
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._forget(selector, conn)
            conn.close()
            return
        pending.head += data
        end = _end_of_head(pending.head)
        if end < 0:
            if len(pending.head) > MAX_HEAD:
                self._forget(selector, conn)
                _refuse(conn, "431 Request Header Fields Too Large")
            return
        self._forget(selector, conn)
        head = bytes(pending.head)
        if end > MAX_HEAD:
            _refuse(conn, "431 Request Header Fields Too Large")
        elif end < len(head) or _has_body(head[:end]):
            # The routes take no body, and one request per connection.
            _refuse(conn, "400 Bad Request")
        else:
            self._hand_over(conn, pending.address, head)

    def _hand_over(self, conn: socket.socket, address: Any, head: bytes) -> None:
        with self._lock:
            if self._handlers >= MAX_HANDLERS:
                if len(self._queue) >= MAX_QUEUED:
                    _refuse(conn, "503 Service Unavailable")
                else:
                    self._queue.append((conn, address, head))
                return
            self._handlers += 1
        thread = threading.Thread(
            target=self._answer_all,
            args=(conn, address, head),
            name=HANDLER_THREAD_NAME,
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:  # no more threads: answer nothing rather than crash
            with self._lock:
                self._handlers -= 1
            _refuse(conn, "503 Service Unavailable")

    def _answer_all(self, conn: socket.socket, address: Any, head: bytes) -> None:
        """A handler thread: answer this request, then those queued meanwhile."""
        ident = threading.get_ident()
        marks.mark(ident, "admin")
        try:
            while True:
                self._answer(conn, address, head)
                with self._lock:
                    if self._stopping:
                        while self._queue:
                            self._queue.popleft()[0].close()
                    if not self._queue:
                        self._handlers -= 1
                        return
                    conn, address, head = self._queue.popleft()
        finally:
            marks.unmark(ident)

    def _answer(self, conn: socket.socket, address: Any, head: bytes) -> None:
        self._answering.add(conn)
        try:
            conn.setblocking(True)
            _AdminHandler(conn, address, self, head)
        except Exception:
            log.exception("flask-utd: the admin listener failed on a request")
        finally:
            self._answering.discard(conn)
            self.shutdown_request(conn)

    def forget_in_child(self) -> None:
        """In a forked child: close the copies of the listening socket and of
        every connection; the threads that served them do not exist here."""
        queued = [conn for conn, _, _ in list(self._queue)]
        for sock in [
            self.socket,
            self._wake_r,
            self._wake_w,
            *list(self._pending),
            *list(self._answering),
            *queued,
        ]:
            _close_copy(sock)
        if self._selector is not None:
            try:
                self._selector.close()
            except OSError:
                pass


@dataclass
class Listener:
    """The admin listener of this process."""

    pid: int
    #: What it listens on, as people write it: ``host:port`` or ``unix:/path``.
    address: str
    server: _AdminServer
    thread: threading.Thread


_listeners: list[Listener] = []


def _bind(where: tuple[str, int] | str) -> socket.socket:
    if isinstance(where, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if stat.S_ISSOCK(os.lstat(where).st_mode):
                os.unlink(where)  # left by an earlier master: nobody listens on it
        except FileNotFoundError:
            pass
        sock.bind(where)
    else:
        host, port = where
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    sock.listen(socket.SOMAXCONN)
    return sock


def _describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    host = f"[{name[0]}]" if sock.family == socket.AF_INET6 else name[0]
    return f"{host}:{name[1]}"


def start_admin(app: Flask, where: tuple[str, int] | str) -> Listener:
    """Serve ``app``'s ``/_utd/`` routes on ``where`` from a daemon thread.

    :param where: ``(host, port)`` or a Unix socket path (``UTD_ADMIN_LISTEN``).
    :raises OSError: the address cannot be bound.
    """
    sock = _bind(where)
    try:
        address = _describe(sock)
        if sock.family == socket.AF_UNIX:
            host, port = f"unix://{sock.getsockname()}", 0
        else:
            host, port = sock.getsockname()[:2]
        # werkzeug's server on the socket bound above: werkzeug would
        # ``sys.exit`` on a bind error, which must not end the uWSGI master.
        server = _AdminServer(
            host, port, only_utd(app), handler=_AdminHandler, fd=sock.fileno()
        )
    finally:
        # werkzeug works on its own duplicate of the descriptor.
        sock.close()
    thread = threading.Thread(
        target=server.serve_forever, name=ADMIN_THREAD_NAME, daemon=True
    )
    listener = Listener(os.getpid(), address, server, thread)
    _listeners.append(listener)
    thread.start()
    assert thread.ident is not None
    marks.mark(thread.ident, "admin")
    return listener


def stop_admin() -> None:
    """Stop this process's admin listeners (used by tests)."""
    pid = os.getpid()
    for listener in list(_listeners):
        if listener.pid == pid:
            listener.server.shutdown()
            listener.server.server_close()
            listener.thread.join(5)
            if listener.thread.ident is not None:
                marks.unmark(listener.thread.ident)
        _listeners.remove(listener)


@forks.renew_in_child
def after_fork_in_child() -> None:
    """In a forked child: close the copies of the parent's listening socket and
    of the connections it was serving. Its threads do not exist here."""
    pid = os.getpid()
    for listener in list(_listeners):
        if listener.pid == pid:
            continue
        _listeners.remove(listener)
        listener.server.forget_in_child()
