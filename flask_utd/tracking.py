"""What each thread of this process is serving: the request context of a dump.

``utd_bp`` records a request when it starts and forgets it at teardown; the agent
reads the record when it dumps the thread. The record lives in a process-level
dict keyed by :func:`threading.get_ident`, not in ``app.extensions["utd"]``: a
thread serves one request at a time whatever app it belongs to, and the agent,
which dumps the whole process, must see every app's requests.

The request path does as little as possible: no lock (one assignment to and one
``pop`` from a dict, each atomic under the GIL, each thread touching only its own
key), one small tuple, and no formatting; the agent formats at dump time.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from datetime import timezone
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    from flask import Request

#: ``{thread ident: (method, path, endpoint, request id, wall start, monotonic start)}``
_current: dict[int, tuple[str, str, str | None, str | None, float, float]] = {}

#: Longest request id kept in a report; the header comes from the client.
MAX_REQUEST_ID = 200
#: Longest path kept in a report.
MAX_PATH = 2000


def request_started(request: Request, capture_query: bool) -> None:
    """Record that this thread now serves ``request``.

    :param request: the request being served.
    :param capture_query: keep the query string (it may hold secrets).
    """
    path = request.path
    if capture_query and request.query_string:
        path = request.full_path
    _current[threading.get_ident()] = (
        request.method,
        path,
        request.endpoint,
        request.environ.get("HTTP_X_REQUEST_ID"),
        time.time(),
        time.monotonic(),
    )


def request_ended() -> None:
    """Forget this thread's request (at teardown, whatever happened)."""
    _current.pop(threading.get_ident(), None)


def request_of(ident: int, now: float | None = None) -> dict[str, Any] | None:
    """The report's ``request`` of the thread ``ident``, or ``None``.

    :param ident: the thread's ident.
    :param now: ``time.monotonic()`` of the dump, the same for every thread.
    """
    record = _current.get(ident)
    if record is None:
        return None
    method, path, endpoint, request_id, wall, mono = record
    if now is None:
        now = time.monotonic()
    return {
        "method": method,
        "path": path[:MAX_PATH],
        "endpoint": endpoint,
        "request_id": request_id[:MAX_REQUEST_ID] if request_id else None,
        "started_at": datetime.fromtimestamp(wall, timezone.utc).isoformat(
            timespec="milliseconds"
        ),
        "elapsed_s": round(max(0.0, now - mono), 3),
    }


def after_fork_in_child() -> None:
    """A forked child serves none of its parent's requests (only the forking
    thread exists there, and it is not serving)."""
    _current.clear()


os.register_at_fork(after_in_child=after_fork_in_child)
