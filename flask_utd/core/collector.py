"""The collector: asks every process of one server instance for its dump, in
parallel, each with a deadline, and merges one ``flask-utd/1`` report.

It never fails or hangs because of one process: what does not answer is listed
with a status and a message that says what to do. Imports neither Flask nor the
app, so that ``python -m flask_utd dump`` stays lean.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any

from . import marks
from . import sockets
from . import wire
from .config import DEFAULTS
from .errors import InstanceNotFound
from .fallback import fallback_stacks
from .fallback import fh_path
from .report import ROLE_ORDER
from .report import SCHEMA
from .report import Process
from .report import Report
from .report import process_entry
from .summary import summarize

#: Time the collector allows itself beyond the per-process deadline.
MARGIN = 0.25
#: Part of the deadline kept for the faulthandler fallback: a process that has
#: not answered by ``timeout - FALLBACK_SHARE * timeout`` (at most
#: ``FALLBACK_MAX`` s before the end) is signalled for its stacks instead.
FALLBACK_SHARE = 0.25
FALLBACK_MAX = 0.5


def _utc_now() -> str:
    """Now, as ISO 8601 UTC with milliseconds (what ``datetime.isoformat`` gives);
    without :mod:`datetime`, which the lean command need not import."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    return f"{stamp}.{int(now * 1000) % 1000:03d}+00:00"


def _timeout_message(pid: int, timeout: float) -> str:
    return (
        f"process {pid} did not answer within {timeout:g} s (UTD_TIMEOUT). A thread"
        " may hold the GIL in C code (a long regex, a C extension, a ctypes call),"
        " which stops every Python thread of that process, the agent included; or"
        " the process is being stopped. Try again, raise UTD_TIMEOUT, or look at it"
        " with py-spy where ptrace is allowed."
    )


def ask(path: str, pid: int, deadline: float, timeout: float, options: str) -> Process:
    """Ask the agent on ``path`` for its process report; never raise.

    Speaks to the agent's RPyC server through :mod:`flask_utd.core.wire`, which does
    not import RPyC (see docs/performance.md).
    """
    call = wire.Call(path, "dump", options)
    wire.call_all([call], deadline)
    return _outcome(call, pid, timeout)


def _outcome(call: wire.Call, pid: int, timeout: float) -> Process:
    """The report of process ``pid`` from its ended ``dump`` call; never raise."""
    path = call.path
    err = call.error
    if err is not None and not call.connected:
        if isinstance(err, (ConnectionRefusedError, FileNotFoundError)):
            # Gone if nobody listens, or if its socket was removed meanwhile (the
            # process exited, or the server's hooks cleaned up after it).
            if sockets.remove_if_stale(path) or not os.path.lexists(path):
                try:
                    os.unlink(fh_path(os.path.dirname(path), pid))
                except OSError:
                    pass
                return process_entry(
                    pid,
                    status="stale",
                    error=f"process {pid} is gone (nothing listens on its socket); its"
                    " socket was removed. If it was a worker, the server starts a"
                    " new one.",
                )
            return process_entry(
                pid, status="refused", error=f"process {pid} refused the connection."
            )
        if isinstance(err, (TimeoutError, EOFError)):
            return process_entry(
                pid, status="timeout", error=_timeout_message(pid, timeout)
            )
        return process_entry(
            pid,
            status="error",
            error=f"cannot connect to the agent of process {pid}: {err}.",
        )
    if isinstance(err, TimeoutError):
        return process_entry(
            pid, status="timeout", error=_timeout_message(pid, timeout)
        )
    if isinstance(err, (EOFError, ConnectionResetError, BrokenPipeError)):
        # The agent hangs up on a peer of another uid (SO_PEERCRED), and on a
        # client it has no room for; or the process is exiting.
        if _exited(pid, path):
            return process_entry(
                pid,
                status="stale",
                error=f"process {pid} exited while it was asked (a worker being"
                " replaced or killed). If it was a worker, the server starts a new"
                " one.",
            )
        return process_entry(
            pid,
            status="refused",
            error=f"the agent of process {pid} closed the connection without answering:"
            " it accepts only this user and root (run the command as the server's"
            " user), and turns new clients away while it is busy with others (try"
            " again); or the process was exiting (a worker being replaced).",
        )
    if err is not None:
        return process_entry(
            pid, status="error", error=f"the agent of process {pid} failed: {err}."
        )
    try:
        report: Process = json.loads(call.value)
        if not isinstance(report, dict) or report.get("pid") != pid:
            raise ValueError("not the report of this process")
    except (TypeError, ValueError) as err:
        return process_entry(
            pid,
            status="error",
            error=f"process {pid} answered with a bad report: {err}.",
        )
    return report


def _fallback(entry: sockets.Entry, report: Process, final: float) -> Process:
    """``report`` (a timeout) with the stacks of ``entry`` from faulthandler, got
    by ``final`` (see :mod:`flask_utd.core.fallback`)."""
    directory = os.path.dirname(entry.path)
    threads, note = fallback_stacks(directory, entry.pid, final)
    report = report.copy()
    report["error"] = f"{report['error']} Fallback: {note}"
    if threads is not None:
        report["threads"] = threads
        report["stacks_source"] = "faulthandler"
        header = _fh_header(directory, entry.pid)
        if header is not None:
            report["role"] = header.get("role", report["role"])
            report["worker_id"] = header.get("worker_id", report["worker_id"])
    return report


def _fh_header(directory: str, pid: int) -> dict[str, Any] | None:
    try:
        with open(fh_path(directory, pid), "rb") as f:
            header = json.loads(f.readline(4096))
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def _exited(pid: int, path: str) -> bool:
    """Whether process ``pid`` is gone or exiting: its socket was removed (at
    exit, or by the server's hooks), or it is dead or a zombie."""
    if not os.path.lexists(path) or not sockets.pid_alive(pid):
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return True
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] in (b"Z", b"X", b"")


def _unsafe_entry(entry: sockets.Entry) -> Process | None:
    if not sockets.pid_alive(entry.pid):
        try:
            os.unlink(entry.path)
        except OSError:
            pass
        return None
    try:
        with open(entry.path) as f:
            note = json.load(f)
        return process_entry(
            entry.pid,
            status="unsafe",
            error=str(note["error"]),
            role=note["role"],
            worker_id=note["worker_id"],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return process_entry(
            entry.pid, status="unsafe", error="this process runs no agent."
        )


def _ask_all(
    asked: list[sockets.Entry],
    deadline: float,
    final: float,
    timeout: float,
    options: str,
    fallback: bool,
    meanwhile: Callable[[], None] | None = None,
) -> list[Process]:
    """Ask every agent at once (:func:`wire.call_all`), each by ``deadline``,
    calling ``meanwhile`` while they work; then, with ``fallback``, get the
    stacks of those that did not answer from faulthandler, one daemon thread
    each, by ``final``.

    A fallback is never waited for beyond ``final`` plus :data:`MARGIN`: its
    process is then reported as a plain timeout, and the thread ends by itself.
    """
    calls = [wire.Call(e.path, "dump", options) for e in asked]
    wire.call_all(calls, deadline, meanwhile)
    reports = [_outcome(c, e.pid, timeout) for c, e in zip(calls, asked, strict=True)]
    if not fallback:
        return reports
    late = [i for i, r in enumerate(reports) if r["status"] == "timeout"]
    fallen: dict[int, Process] = {}

    def run(i: int) -> None:
        with marks.marking("collector"):
            fallen[i] = _fallback(asked[i], reports[i], final)

    # Plain threads rather than a thread pool: concurrent.futures costs the lean
    # command more to import than all its asks take.
    threads = [
        threading.Thread(target=run, args=(i,), name="utd-fallback", daemon=True)
        for i in late
    ]
    for thread in threads:
        thread.start()
    end = final + MARGIN
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    return [fallen.get(i, r) for i, r in enumerate(reports)]


@marks.marks_caller("collector")
def collect(
    socket_dir: str,
    instance: str,
    *,
    timeout: float = DEFAULTS["UTD_TIMEOUT"],
    pid: int | None = None,
    roster: Iterable[dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
    fallback: bool = True,
    slow_after: float = DEFAULTS["UTD_SLOW_REQUEST"],
) -> Report:
    """Collect the report of every process of ``instance``.

    Returns within ``timeout`` plus a small margin, whatever the processes do. A
    process that misses its deadline is reported as ``timeout``; if it registered
    faulthandler, its stacks are taken from there in the last part of
    ``timeout`` (``"stacks_source": "faulthandler"``).

    :param socket_dir: the ``UTD_SOCKET_DIR``.
    :param instance: the server instance (a directory in ``socket_dir``).
    :param timeout: each process's deadline, in seconds (``UTD_TIMEOUT``).
    :param pid: only this process.
    :param roster: the server's own list of workers (``pid``, ``worker_id``);
        a worker in it without a socket is reported, not forgotten.
    :param fallback: signal a process that misses its deadline for faulthandler's
        stacks, if it registered.
    :param options: dump options passed to every agent: ``{"locals": True}``
        (or a number of frames) asks for locals, which each agent gives only
        when its app set ``UTD_LOCALS = True``.
    :param slow_after: requests older than this many seconds are listed as stuck
        in the report's ``summary`` (``UTD_SLOW_REQUEST``).
    """
    started = time.monotonic()
    final = started + timeout
    deadline = final - (min(FALLBACK_MAX, FALLBACK_SHARE * timeout) if fallback else 0)
    directory = sockets.instance_dir(socket_dir, instance)
    entries = sockets.list_entries(directory)
    if pid is not None:
        entries = [e for e in entries if e.pid == pid]
    text_options = json.dumps(options or {})
    processes: list[Process] = []
    for entry in entries:
        if entry.kind == "unsafe":
            found = _unsafe_entry(entry)
            if found is not None:
                processes.append(found)
    # The master's children, for "unlisted": read from /proc, which takes a read
    # of every process on the machine, while the agents take their dumps.
    children: list[set[int]] = []

    def read_children() -> None:
        if pid is None and not children:
            children.append(_children(instance))

    asked = [e for e in entries if e.kind == "socket"]
    if asked:
        processes += _ask_all(
            asked, deadline, final, timeout, text_options, fallback, read_children
        )
    read_children()
    processes += _without_socket(roster, processes, pid)
    processes.sort(key=_process_order)
    report: Report = {
        "schema": SCHEMA,
        "generated_at": _utc_now(),
        "host": socket.gethostname(),
        "instance": instance,
        "elapsed_s": round(time.monotonic() - started, 4),
        "processes": processes,
        "unlisted": _unlisted(children[0], processes) if children else [],
    }
    report["summary"] = summarize(report, slow_after)
    return report


def _without_socket(
    roster: Iterable[dict[str, Any]] | None,
    processes: list[Process],
    pid: int | None = None,
) -> list[Process]:
    """An ``error`` entry for each worker of the server's ``roster`` that is not
    among ``processes`` (it has no agent socket)."""
    known = {p["pid"] for p in processes}
    return [
        process_entry(
            worker["pid"],
            status="error",
            error=f"worker {worker['worker_id']} (pid {worker['pid']}) has no agent"
            " socket: it may be starting, or its agent failed to start (see its"
            " log).",
            role="worker",
            worker_id=worker["worker_id"],
        )
        for worker in roster or ()
        if worker["pid"] and worker["pid"] not in known and pid in (None, worker["pid"])
    ]


def _process_order(process: Mapping[str, Any]) -> tuple[int, int, int]:
    return (
        ROLE_ORDER.get(process["role"], 5),
        process["worker_id"] or 0,
        process["pid"],
    )


def collect_stats(
    socket_dir: str,
    instance: str,
    *,
    timeout: float = DEFAULTS["UTD_TIMEOUT"],
    roster: Iterable[dict[str, Any]] | None = None,
    slow_after: float = DEFAULTS["UTD_SLOW_REQUEST"],
) -> dict[str, Any]:
    """Ask every process of ``instance`` how many requests it serves and since
    when: the agents' ``stats``, which walks no stack (``GET /_utd/metrics``).

    Returns within ``timeout`` plus a small margin. Each process is listed with
    the same ``status`` and ``error`` as in a dump (there is no faulthandler
    fallback: a process that does not answer is a ``timeout``), and where its
    agent answered, ``in_flight``, ``oldest_s`` (``0.0`` when idle) and
    ``stuck``, the count of requests of at least ``slow_after`` seconds.

    :param roster: the server's own list of workers, as for :func:`collect`.
    :param slow_after: ``UTD_SLOW_REQUEST``.
    """
    started = time.monotonic()
    directory = sockets.instance_dir(socket_dir, instance)
    entries = sockets.list_entries(directory)
    processes: list[dict[str, Any]] = []
    for entry in entries:
        if entry.kind == "unsafe":
            found = _unsafe_entry(entry)
            if found is not None:
                processes.append(dict(found))
    asked = [e for e in entries if e.kind == "socket"]
    calls = [wire.Call(e.path, "stats") for e in asked]
    wire.call_all(calls, started + timeout)
    for call, entry in zip(calls, asked, strict=True):
        answer: dict[str, Any] = dict(_outcome(call, entry.pid, timeout))
        ages = answer.pop("requests", None)
        if isinstance(ages, list):
            answer["in_flight"] = len(ages)
            answer["oldest_s"] = max(ages, default=0.0)
            answer["stuck"] = sum(1 for age in ages if age >= slow_after)
        processes.append(answer)
    for process in processes:
        process.pop("threads", None)
    processes += [
        {k: v for k, v in p.items() if k != "threads"}
        for p in _without_socket(roster, [], None)
        if p["pid"] not in {q["pid"] for q in processes}
    ]
    processes.sort(key=_process_order)
    return {
        "host": socket.gethostname(),
        "instance": instance,
        "slow_after": slow_after,
        "elapsed_s": round(time.monotonic() - started, 4),
        "processes": processes,
    }


def collect_samples(
    socket_dir: str,
    instance: str,
    *,
    samples: int,
    interval: float,
    slow_after: float = DEFAULTS["UTD_SLOW_REQUEST"],
    **kwargs: Any,
) -> Report:
    """Collect ``samples`` reports of ``instance``, ``interval`` seconds apart
    (from the start of one to the start of the next, or at once when one took
    longer), and merge them (:func:`flask_utd.core.samples.merge_samples`): the last
    report, every thread with ``moved`` and ``same_line_s``, the summary
    computed anew with the unmoved request threads first.

    Takes about ``(samples - 1) * interval`` plus one collection; each
    collection keeps its own deadline (``timeout``).

    :param samples: how many reports, 1 or more (1: one collection, and every
        thread's ``moved`` is ``None``).
    :param interval: seconds between the starts of two collections.
    :param kwargs: what :func:`collect` takes besides ``slow_after``.
    """
    from .samples import merge_samples

    if samples < 1 or not interval > 0:
        raise ValueError("samples must be 1 or more and interval above 0")
    started = time.monotonic()
    taken: list[tuple[float, Report]] = []
    for i in range(samples):
        if i:
            # A plain sleep: the collector's thread has nothing else to do.
            time.sleep(max(0.0, started + i * interval - time.monotonic()))
        when = time.monotonic()
        taken.append(
            (when, collect(socket_dir, instance, slow_after=slow_after, **kwargs))
        )
    report = merge_samples(taken, interval)
    report["elapsed_s"] = round(time.monotonic() - started, 4)
    report["summary"] = summarize(report, slow_after)
    return report


def _children(instance: str) -> set[int]:
    """The live children of the instance's master (none if it is not a pid, or
    gone)."""
    if not instance.isdigit() or not sockets.pid_alive(int(instance)):
        return set()
    return sockets.live_children(int(instance))


def _unlisted(children: set[int], processes: list[Process]) -> list[dict[str, int]]:
    """Live children of the instance's master that are not in the report: a worker
    being forked (no socket yet) or exiting (socket removed), or a process that runs
    no app (uWSGI's http router). Listed so that a report is never short of a
    process without saying so."""
    reported = {p["pid"] for p in processes}
    return [{"pid": child} for child in sorted(children) if child not in reported]


def find_instance(
    socket_dirs: Iterable[str], instance: str | None = None
) -> tuple[str, str]:
    """Find the one server instance to dump: ``(socket_dir, instance)``.

    :param socket_dirs: where to look, in order.
    :param instance: a given instance id (the master's pid); must exist.
    :raises InstanceNotFound: none, or more than one, was found; the message lists
        them and says what to pass.
    """
    dirs = list(dict.fromkeys(socket_dirs))
    found = [(d, i) for d in dirs for i in sockets.list_instances(d)]
    if instance is not None:
        found = [(d, i) for d, i in found if i == instance]
        if not found:
            raise InstanceNotFound(
                f"no running server instance {instance} in {', '.join(dirs)}."
            )
    if not found:
        raise InstanceNotFound(
            f"no running server found in {', '.join(dirs)}. Is the app running with"
            " utd_bp registered, and does UTD_SOCKET_DIR (or --socket-dir) name the"
            " directory the server uses?"
        )
    if len(found) > 1:
        listing = ", ".join(f"{i} (in {d})" for d, i in found)
        raise InstanceNotFound(
            f"{len(found)} server instances are running: {listing}; choose one with"
            " --instance (its master's pid)."
        )
    return found[0]


def all_answered(report: Report) -> bool:
    """Whether every process in ``report`` answered with status ``ok``."""
    return all(p["status"] == "ok" for p in report["processes"])
