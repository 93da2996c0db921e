"""What each thread of this process is serving: the request context of a dump.

:class:`RequestTracker`, a WSGI middleware that ``utd_bp`` puts around the app's
``wsgi_app``, records a request when it enters the app and forgets it when the app
returns; the agent reads the record when it dumps the thread. The record lives in
a process-level dict keyed by the OS thread's ident, not in
``app.extensions["utd"]``: a thread serves one request at a time whatever app it
belongs to, and the agent, which dumps the whole process, must see every app's
requests.

Under gevent (gunicorn's gevent worker, uWSGI's gevent loop) every request of a
worker runs in its own greenlet and all of them share one OS thread: the key is
then the greenlet's id (what gevent's ``threading.get_ident`` answers), so that
a thousand concurrent greenlets keep a thousand records. Which key a process
uses is decided once, at its first request (:func:`_decide`): a request that
runs in a greenlet other than its thread's main one means a greenlet server.
A threaded server keeps calling the one C function it always did.

The request path does as little as possible: no lock (one assignment to and one
``pop`` from a dict, each atomic under the GIL, each thread touching only its own
key), one small tuple holding the WSGI environ, and no formatting, not even of
the path; the agent reads the environ and formats at dump time. A middleware, not
``before_request`` / ``teardown_request`` functions: each Flask hook costs a few
microseconds of dispatch and context look-ups, three of them about 12 us a
request (docs/performance.md).

The watchdog (:mod:`.watchdog`) adds two checks of a module global to it, about
20 ns each: whether a sleeping watchdog must be woken (:data:`_wake`, set only
while the watchdog sleeps for want of requests), and whether a request it
reported has ended (:data:`_watched`, empty unless one is stuck).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from collections.abc import Iterable
from datetime import datetime
from datetime import timezone
from typing import TYPE_CHECKING
from typing import Any

from ..core.report import Request
from . import forks
from . import native

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

#: What is kept of a request while it runs: ``[environ, wall start, monotonic
#: start, keep the query, what the agent read of it]`` (see :data:`_current`).
Record = list[Any]

#: ``{thread ident: record}``: the record's last item is ``None`` until a dump
#: formats the parts that do not change (:func:`request_of`), so that the next
#: dumps of a long request (a thousand stuck greenlets, ``--samples``) do not
#: again.
_current: dict[int, Record] = {}

#: Set by the watchdog while it sleeps because no request is in flight: the
#: first request to enter calls it (the watchdog clears it at once). ``None``
#: otherwise, so that a request pays a look-up, not a call.
_wake: Callable[[], None] | None = None


class Watched:
    """A request the watchdog reported stuck: the request path says when it ends."""

    __slots__ = ("ended", "record", "started")

    def __init__(self, record: Record) -> None:
        self.record = record
        #: ``time.monotonic()`` at the request's start.
        self.started = record[2]
        #: ``time.monotonic()`` when it ended, once it has.
        self.ended: float | None = None


#: ``{thread ident: Watched}``: empty unless the watchdog reported a request
#: that is still running.
_watched: dict[int, Watched] = {}

#: Longest request id kept in a report; the header comes from the client.
MAX_REQUEST_ID = 200
#: Longest path kept in a report.
MAX_PATH = 2000

_time = time.time
_monotonic = time.monotonic


class RequestTracker:
    """WSGI middleware that records, per thread, the request the app serves.

    ``utd_bp`` installs it (``app.wsgi_app = RequestTracker(app.wsgi_app, ...)``,
    Flask's way of adding middleware) when it is registered.

    :param wsgi_app: the WSGI app to wrap.
    :param capture_query: show the query string in dumps (it may hold secrets).
        Never shown for utd_bp's own URLs, whose token would end up in dumps.
    :param on_new_process: called at the first request each process serves
        (after a fork too), before the request; ``None`` for nothing.
    """

    def __init__(
        self,
        wsgi_app: WSGIApplication,
        *,
        capture_query: bool = False,
        on_new_process: Callable[[], None] | None = None,
    ) -> None:
        self.wsgi_app = wsgi_app
        self.capture_query = capture_query
        self.on_new_process = on_new_process
        self._pid: int | None = None

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if self.on_new_process is not None and self._pid != os.getpid():
            self._pid = os.getpid()
            self.on_new_process()
        ident = _get_ident()
        outer = _current.get(ident)  # an app called from another tracked app
        _current[ident] = [environ, _time(), _monotonic(), self.capture_query, None]
        wake = _wake  # read once: the watchdog clears it from its own thread
        if wake is not None:
            wake()
        try:
            return self.wsgi_app(environ, start_response)
        finally:
            if outer is None:
                _current.pop(ident, None)
            else:
                _current[ident] = outer
            if _watched:
                _request_ended(ident)


def _request_ended(ident: int) -> None:
    """The request path, at the end of a request, while some request is watched:
    note the end of this thread's, if the watchdog reported it."""
    watched = _watched.get(ident)
    if (
        watched is not None
        and watched.ended is None
        and _current.get(ident) is not watched.record
    ):
        watched.ended = _monotonic()


def _attribute(obj: Any, name: str) -> Any:
    """``obj.name`` from the instance's ``__dict__`` only: the agent reads other
    threads' objects and never runs their properties."""
    if obj is None:
        return None  # not routed yet (or no Flask request): no exception to raise
    try:
        namespace = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return None
    return namespace.get(name) if isinstance(namespace, dict) else None


def _text(environ: dict[str, Any], key: str) -> str:
    """A WSGI environ string (latin-1 bytes in a ``str``) as UTF-8 text, the way
    Werkzeug decodes it."""
    value = environ.get(key)
    if not isinstance(value, str):
        return ""
    return value.encode("latin-1", "replace").decode("utf-8", "replace")


# W3C Trace Context: version-trace_id-parent_id-flags, lower-case hex.
_TRACEPARENT = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-|$)"
)


def trace_of(environ: dict[str, Any]) -> tuple[str, str] | None:
    """``(trace id, span id)`` from the request's W3C ``traceparent`` header, or
    ``None`` when it has none or an invalid one (which W3C says to ignore)."""
    header = environ.get("HTTP_TRACEPARENT")
    if not isinstance(header, str):
        return None
    match = _TRACEPARENT.match(header.strip())
    if match is None or match[1] == "ff":
        return None
    trace_id, span_id = match[2], match[3]
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id


def request_of(ident: int, now: float | None = None) -> Request | None:
    """The report's ``request`` of the thread ``ident``, or ``None``.

    :param ident: the thread's ident, or the greenlet's id (``id(greenlet)``).
    :param now: ``time.monotonic()`` of the dump, the same for every thread.
    """
    record = _current.get(ident)
    if record is None:
        return None
    environ, wall, mono, capture_query, fixed = record
    if fixed is None:
        fixed = record[4] = _fixed(environ, wall)
    method, path, query, request_id, started_at = fixed
    if now is None:
        now = time.monotonic()
    # Routing has happened once Flask's request knows its URL rule.
    rule = _attribute(environ.get("werkzeug.request"), "url_rule")
    endpoint = _attribute(rule, "endpoint")
    if not isinstance(endpoint, str):
        endpoint = None
    if (
        capture_query
        and query
        and endpoint is not None
        and endpoint.rpartition(".")[0] != "utd"
    ):
        path = f"{path}?{query}"[:MAX_PATH]
    return {
        "method": method,
        "path": path,
        "endpoint": endpoint,
        "request_id": request_id,
        "started_at": started_at,
        "elapsed_s": round(max(0.0, now - mono), 3),
    }


def _fixed(
    environ: dict[str, Any], wall: float
) -> tuple[str | None, str, str, str | None, str]:
    """What a request's report says that does not change while it runs: method,
    path, query, request id, start."""
    method = environ.get("REQUEST_METHOD")
    request_id = environ.get("HTTP_X_REQUEST_ID")
    if not isinstance(request_id, str):
        request_id = None
    return (
        method if isinstance(method, str) else None,
        ("/" + _text(environ, "PATH_INFO").lstrip("/"))[:MAX_PATH],
        _text(environ, "QUERY_STRING"),
        request_id[:MAX_REQUEST_ID] if request_id else None,
        datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds"),
    )


def _greenlet_key() -> int:
    """The key of the calling greenlet's records: its id, or for a thread's main
    greenlet the thread's ident (as for a thread without greenlets)."""
    current = _getcurrent()
    if current.parent is None:
        return _thread_ident()
    return id(current)


def _decide() -> int:
    """Choose this process's key at its first request, and return it."""
    global _get_ident, _getcurrent, _thread_ident
    _thread_ident = native.get_ident
    greenlet = sys.modules.get("greenlet")
    if greenlet is not None and greenlet.getcurrent().parent is not None:
        _getcurrent = greenlet.getcurrent
        _get_ident = _greenlet_key
    else:
        _get_ident = _thread_ident
    return _get_ident()


_get_ident: Callable[[], int] = _decide
# Set by _decide, before _greenlet_key can be called.
_getcurrent: Callable[[], Any]
_thread_ident: Callable[[], int]


def ages(now: float | None = None) -> list[float]:
    """How long each request in flight in this process has run, in seconds,
    oldest first: what ``GET /_utd/metrics`` asks every agent.

    Reads the records only, never a frame. ``utd_bp``'s own requests (a dump
    or a scrape being served) are left out: they are the question, not the
    answer.

    :param now: ``time.monotonic()`` of the question.
    """
    if now is None:
        now = time.monotonic()
    found = []
    # A copy first: request threads add and remove their records meanwhile.
    for environ, _wall, mono, *_rest in list(_current.values()):
        endpoint = _attribute(
            _attribute(environ.get("werkzeug.request"), "url_rule"), "endpoint"
        )
        if isinstance(endpoint, str) and endpoint.rpartition(".")[0] == "utd":
            continue
        found.append(round(max(0.0, now - mono), 3))
    found.sort(reverse=True)
    return found


@forks.renew_in_child
def after_fork_in_child() -> None:
    """A forked child serves none of its parent's requests (only the forking
    thread exists there, and it is not serving), decides its own key (a
    gunicorn worker patches gevent in after the fork), and its parent's
    watchdog does not run there."""
    global _get_ident, _wake
    _current.clear()
    _watched.clear()
    _wake = None
    _get_ident = _decide
