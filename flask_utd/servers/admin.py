"""The admin listener: the uWSGI master serves ``/_utd/`` on its own address.

A URL served by the app's workers fails exactly when all of them are stuck. With
``UTD_ADMIN_LISTEN`` set, the master serves the blueprint's routes (and nothing
else) from one daemon thread, ``utd-admin``, on that address.

The thread and its listening socket belong to the master: a forked worker closes
its copies at once (:func:`after_fork_in_child`). It runs only where uWSGI calls
Python's fork hooks (``py-call-uwsgi-fork-hooks``); without them, a worker forked
while this thread holds the GIL deadlocks (DESIGN.md, hazard 1b).
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass
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

#: Name of the admin listener's thread.
ADMIN_THREAD_NAME = "utd-admin"
#: How often the idle listener wakes up to see whether it should stop. Each
#: wake-up holds the GIL for microseconds.
POLL_INTERVAL = 1.0
#: A slow client cannot keep the one admin thread longer than this.
CLIENT_TIMEOUT = 10.0
#: The WSGI environ key, true in a request that the admin listener serves: its
#: ``/_utd/metrics`` needs no token there (a client cannot set an environ key
#: that has no ``HTTP_`` prefix).
SERVED_BY_ADMIN = "flask_utd.admin_listener"


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
    """Logs requests without their query string: it holds the token."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = self.path.split("?", 1)[0]
        self.log("info", '"%s %s" %s %s', self.command, path, code, size)


class _AdminServer(BaseWSGIServer):
    """werkzeug's one-thread server that remembers the connection it serves, so
    that a forked child can close its copy of it too."""

    current: socket.socket | None = None

    def process_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(CLIENT_TIMEOUT)
        self.current = request
        try:
            super().process_request(request, client_address)
        finally:
            self.current = None


@dataclass
class Listener:
    """The admin listener of this process."""

    pid: int
    #: What it listens on, as people write it: ``host:port`` or ``unix:/path``.
    address: str
    server: BaseWSGIServer
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
    sock.listen(16)
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
        # werkzeug's one-thread server (what ``make_server(threaded=False)``
        # builds) on the socket bound above: werkzeug would ``sys.exit`` on a
        # bind error, which must not end the uWSGI master.
        server = _AdminServer(
            host, port, only_utd(app), handler=_AdminHandler, fd=sock.fileno()
        )
    finally:
        # werkzeug works on its own duplicate of the descriptor.
        sock.close()
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": POLL_INTERVAL},
        name=ADMIN_THREAD_NAME,
        daemon=True,
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
    of the connection it was serving. The thread does not exist here."""
    pid = os.getpid()
    for listener in list(_listeners):
        if listener.pid == pid:
            continue
        _listeners.remove(listener)
        server = listener.server
        for sock in (server.socket, getattr(server, "current", None)):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
