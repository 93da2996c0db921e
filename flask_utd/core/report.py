"""The ``flask-utd/1`` report as typed data: one report of a server instance, one
entry per process, one entry per thread (or greenlet), and the one builder of a
process entry.

The schema grows only by added fields; none is renamed or removed. Fields that
not every report has (older agents, truncation, the faulthandler fallback) are in
the ``total=False`` halves of the classes. docs/report.rst describes each field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from typing import Literal
from typing import TypedDict

#: The schema every report carries in ``"schema"``.
SCHEMA = "flask-utd/1"

#: How a process answered: ``ok`` with its threads, or why not.
Status = Literal["ok", "timeout", "refused", "stale", "unsafe", "error"]
#: Where a process sits in its server.
Role = Literal["master", "worker", "process", "mule", "spooler"]
#: What an entry of ``threads`` is: an OS thread, or a greenlet run by one.
Kind = Literal["thread", "greenlet"]
#: What flask-utd's own threads do (``"own"``): answer dumps, serve the admin
#: listener, collect a dump (the thread of ``GET /_utd/dump``, the CLI), or
#: watch for stuck requests.
Own = Literal["agent", "admin", "collector", "watchdog"]

#: Every status, in the order a reader cares about them.
STATUSES: tuple[Status, ...] = ("ok", "timeout", "refused", "stale", "unsafe", "error")
#: The order processes are listed in.
ROLE_ORDER: dict[str, int] = {
    "master": 0,
    "worker": 1,
    "mule": 2,
    "spooler": 3,
    "process": 4,
}


class Frame(TypedDict, total=False):
    """One frame of a stack. ``file``, ``line``, ``function`` and ``code`` are
    always there; ``locals`` only when locals were asked for."""

    file: str
    line: int
    function: str
    code: str | None
    locals: dict[str, str]


class Request(TypedDict):
    """The request a thread (or greenlet) is serving."""

    method: str | None
    path: str
    endpoint: str | None
    request_id: str | None
    started_at: str
    elapsed_s: float


class BlockingHub(TypedDict):
    """How long a greenlet has kept its hub from running (``"blocking_hub"``)."""

    #: Seconds since the hub's event loop last turned.
    for_s: float
    #: When that was (ISO 8601, UTC).
    since: str


class _ThreadRequired(TypedDict):
    ident: int
    native_id: int | None
    name: str
    daemon: bool | None
    is_agent: bool
    request: Request | None
    frames: list[Frame]


class Thread(_ThreadRequired, total=False):
    """One thread, or one greenlet, of a process."""

    #: ``"thread"`` or ``"greenlet"``.
    kind: Kind
    #: flask-utd's own thread, and what it does; ``None`` for the app's.
    own: Own | None
    #: For a greenlet: the ident of the OS thread whose hub runs it.
    thread_ident: int | None
    wait: str | None
    wait_frame: int | None
    os_state: str | None
    wchan: str | None
    lock_owner: int | None
    #: The C function the innermost frame is calling, when the agent can name
    #: it (``"sqlite3.Connection.execute"``); ``wait`` is then ``"in-call"``
    #: unless the line named the wait already.
    call: str | None
    frames_truncated: int
    #: With samples (``--samples``): whether the stack moved between them;
    #: ``None`` for a thread seen in one sample only.
    moved: bool | None
    #: With samples: for how many seconds the samples found the thread on the
    #: same innermost line, up to the last one (a lower bound); ``None`` for a
    #: thread seen in one sample only.
    same_line_s: float | None
    #: ``"faulthandler"`` for a thread read by the fallback.
    source: str
    #: A greenlet that runs on its OS thread at the moment of the dump: its
    #: frames are that thread's.
    running: bool
    #: The gevent hub of its OS thread.
    hub: bool
    #: The main greenlet of its OS thread (the code that started the hub).
    main: bool
    #: On a hub: how many idle greenlets of a gevent server (kept-alive
    #: connections waiting for a request) its thread has, counted, not listed.
    idle_greenlets: int
    #: On a hub: the greenlet that has not yielded to it for ``blocked_for_s``.
    blocked_by: int
    blocked_for_s: float
    #: On the greenlet that blocks its hub: for how long, since when.
    blocking_hub: BlockingHub


class _ProcessRequired(TypedDict):
    pid: int
    role: str
    worker_id: int | None
    status: Status
    error: str | None
    threads: list[Thread]


class Process(_ProcessRequired, total=False):
    """One process of the server instance."""

    threads_truncated: int
    report_truncated: bool
    #: ``"faulthandler"`` when the stacks came from the fallback.
    stacks_source: str
    locals: dict[str, Any]
    #: In a merged report: where this process runs.
    host: str
    instance: str


class _ReportRequired(TypedDict):
    schema: str
    generated_at: str
    host: str
    processes: list[Process]


class Report(_ReportRequired, total=False):
    """The report of one server instance (or of several, merged)."""

    instance: str
    elapsed_s: float
    #: Live children of the master that are not in the report.
    unlisted: list[dict[str, int]]
    summary: dict[str, Any]
    #: In a merged report: host, instance and time of each report merged.
    merged_from: list[dict[str, Any]]
    #: With samples (``--samples``): ``{"count": N, "interval_s": S}``.
    samples: dict[str, Any]


def process_entry(
    pid: int,
    *,
    role: str = "process",
    worker_id: int | None = None,
    status: Status = "ok",
    error: str | None = None,
    threads: Sequence[Thread] = (),
) -> Process:
    """The entry of one process, the only way one is made: by the agent (its own
    report, or an error), and by the collector for a process that did not answer.

    :param error: what went wrong and what to do; ``None`` when ``status`` is ``ok``.
    """
    return {
        "pid": pid,
        "role": role,
        "worker_id": worker_id,
        "status": status,
        "error": error,
        "threads": list(threads),
    }


def answered(report: Report) -> bool:
    """Whether every process in ``report`` answered with status ``ok``."""
    return all(p["status"] == "ok" for p in report["processes"])
