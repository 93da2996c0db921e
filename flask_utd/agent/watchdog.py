"""The watchdog: a thread in every process that logs a request stuck past
``UTD_WATCHDOG`` before the server kills it.

It costs nothing while no request is in flight: it blocks, without a timeout,
on its inbox (a datagram socket), and the first request to enter wakes it
(:data:`flask_utd.agent.tracking._wake`, published only while it sleeps). While
requests are in flight it looks every half threshold, no more often, the first
time half a threshold after the request that woke it. It goes back to sleep
after a look that finds no request in flight and, where the server counts the
requests each worker served (uWSGI, gunicorn), none served since the look
before: under steady traffic it stays awake rather than being woken by every
request that finds it asleep. At each look:

- a request at least ``0.4 x`` the threshold old is sampled: its thread's stack
  is captured (:func:`flask_utd.agent.snapshot.stack_reports`, the dump's own
  code for one stack) at every look, so that by the look that finds it past
  the threshold it has at least two samples, half a threshold apart or more,
  to say whether it moved;
- a request past the threshold is reported once, at WARNING
  (:mod:`flask_utd.core.watchlog`), between 1 and 1.5 thresholds after it
  started; when it ends, the request path notes the time and the next look
  logs that at INFO.

A worker whose thread holds the GIL cannot run its own watchdog. The master's
watchdog (uWSGI master, gunicorn arbiter) covers that case: a worker's request
path, when it wakes its own sleeping watchdog, also sends a notice to the
master's inbox (a datagram socket in the instance directory,
``<master pid>.watchdog``: found by its name, whenever the master started its
watchdog, before or after forking the worker), and the worker's watchdog says
when it goes back to sleep. While a worker is awake
that way, the master reads the server's accounting every half threshold; a
worker busy past the threshold whose agent does not answer is captured through
the faulthandler fallback (:func:`flask_utd.core.fallback.fallback_stacks`) and
logged, marked as such. The master leaves a note (``<pid>.stalled``) so that
the worker's own watchdog, once it runs again, does not report the same request
a second time.

One watchdog per process, like the agent: the first app to start it decides its
threshold and format. It runs only where the agent may read stacks (never in an
``unsafe`` process). Like the agent, it is a real OS thread under gevent: its
thread, lock, selector and sockets come from :mod:`.native`.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field

from ..core import marks
from ..core import sockets
from ..core.report import Thread
from ..core.samples import StackKey
from ..core.samples import compare
from ..core.samples import stack_key
from . import forks
from . import native
from . import tracking
from .snapshot import stack_reports

log = logging.getLogger("flask_utd")

#: Name of the watchdog's thread in every process.
THREAD_NAME = "utd-watchdog"
#: A request this share of the threshold old is sampled at a look (the next
#: look, half a threshold later, finds it past the threshold): a little under
#: one half, for a look that comes late.
SAMPLE_AT = 0.4
#: The longest the master waits for a busy worker's agent to answer ``info``
#: before it takes the worker for stuck (at most ``UTD_TIMEOUT``): an agent
#: answers in milliseconds unless a thread holds the GIL.
PROBE_TIMEOUT = 0.5
#: The time the master gives faulthandler to write a stuck worker's stacks.
FALLBACK_TIMEOUT = 0.5

# A notice in an inbox: what happened ("w": a request entered while the
# sender's watchdog slept; "s": the sender's watchdog goes to sleep; "x": stop),
# the sender's pid, its threshold, time.monotonic() when it was sent (one clock
# for every process of the machine), and whether it logs JSON.
_NOTICE = struct.Struct("=cidd?")
_WOKE, _SLEEPS, _STOP = b"w", b"s", b"x"


@dataclass(frozen=True)
class WorkerBusy:
    """What the server's own accounting says of one worker."""

    worker_id: int | None
    #: ``time.monotonic()`` since when it has been busy with what it does now
    #: (gunicorn: its last heartbeat; uWSGI: when it was first seen busy with
    #: its current request), or ``None`` when it is idle.
    since: float | None


#: The server's accounting of its workers, by pid (the master's view).
Accounting = Callable[[], dict[int, WorkerBusy]]
#: The server's count of the requests this process has served.
Served = Callable[[], int]


@dataclass
class _Suspect:
    """A request of this process old enough to be sampled."""

    record: tracking.Record
    samples: list[tuple[float, StackKey]] = field(default_factory=list)


@dataclass
class _Reported:
    """A request of this process reported stuck, until its end is logged."""

    watched: tracking.Watched
    thread: Thread
    trace: tuple[str, str] | None
    reported_at: float
    #: The master reported it already (through faulthandler): no record of ours.
    silent: bool


@dataclass
class _Awake:
    """The master's view of one worker whose watchdog is awake."""

    threshold: float
    json: bool
    woke: float = 0.0
    slept: float = 0.0
    #: Reported through faulthandler: (the accounting's busy-since, the time
    #: used for elapsed), until the worker runs again or is gone.
    reported: tuple[float, float] | None = None
    worker_id: int | None = None

    @property
    def awake(self) -> bool:
        return self.woke > self.slept


class Watchdog:
    """The watchdog of this process (see the module's docstring).

    :param threshold: seconds; requests older are reported. ``None`` in a
        master that watches its workers only.
    :param fmt: ``"text"`` or ``"json"`` (``UTD_WATCHDOG_FORMAT``).
    :param role: where this process sits (``"master"``, ``"worker"``, ...).
    :param worker_id: the server's number for this worker, or ``None``.
    :param directory: the instance directory (faulthandler files, notes).
    :param socket_dir: ``UTD_SOCKET_DIR``, and ``instance``: to reach a
        worker's agent.
    :param accounting: in a master, the server's accounting of its workers; it
        then receives the workers' notices on ``<pid>.watchdog`` in ``directory``.
    :param master: in a worker, the path of the master's inbox.
    :param served: the server's count of the requests this process served.
    :param probe_timeout: how long a worker's agent may take to answer ``info``.
    """

    def __init__(
        self,
        *,
        threshold: float | None,
        fmt: str,
        role: str,
        worker_id: int | None,
        directory: str,
        socket_dir: str,
        instance: str,
        accounting: Accounting | None = None,
        master: str | None = None,
        served: Served | None = None,
        probe_timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self.pid = os.getpid()
        self.threshold = threshold
        self.fmt = fmt
        self.role = role
        self.worker_id = worker_id
        self.directory = directory
        self.socket_dir = socket_dir
        self.instance = instance
        self.accounting = accounting
        self.master = master
        self.served = served
        self._served_before = self._count_served()
        self.probe_timeout = probe_timeout
        #: The looks' spacing: half the smallest threshold it watches.
        self.interval = threshold / 2 if threshold else None
        #: The named inbox of a master, which its workers send to.
        self.inbox_path: str | None = None
        if accounting is not None:
            self.inbox_path = sockets.watchdog_inbox_path(directory, self.pid)
            self.inbox = _datagram_socket()
            try:
                os.unlink(self.inbox_path)  # an earlier process with this pid
            except FileNotFoundError:
                pass
            self.inbox.bind(self.inbox_path)
            os.chmod(self.inbox_path, 0o600)
            self.inbox_w = _datagram_socket()
            self.inbox_w.connect(self.inbox_path)
        else:
            pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.inbox, self.inbox_w = (native.unpatched_socket(s) for s in pair)
        self.inbox.setblocking(False)
        self.inbox_w.setblocking(False)
        #: What a worker sends its notices to the master's inbox with.
        self._notices = _datagram_socket() if master is not None else None
        self._selector = native.default_selector()
        self._selector.register(self.inbox, selectors.EVENT_READ)
        self.thread: native.NativeThread | None = None
        # Held until stop(): the wait between looks is a timed acquire of it.
        self._stop_lock = native.allocate_lock()
        self._stop_lock.acquire()
        self._stopped = False
        self._suspects: dict[int, _Suspect] = {}
        self._reported: dict[int, _Reported] = {}
        self._workers: dict[int, _Awake] = {}
        #: How many times the thread has looked, and been woken (by a request, a
        #: notice, or the end of its wait between looks): for tests and the bench.
        self.looks = 0
        self.wakeups = 0
        #: How many stuck records it has written (``GET /_utd/metrics``).
        self.records = 0

    # -- the thread -------------------------------------------------------------

    def start(self) -> None:
        if self.threshold is not None:
            # Asleep from now, not from its thread's first sleep: a request that
            # comes before the thread ever runs tells the master too. One that
            # then held the GIL kept the thread from running at all, and the
            # master never heard of this worker (docs/watchdog.rst).
            tracking._wake = self._wake
            if tracking._current:
                # Started while other threads serve requests (at a first
                # request, outside the servers' hooks): those entered already.
                self._tell_master(_WOKE, _oldest_start())
        self.thread = native.start_thread(self._run, THREAD_NAME)
        assert self.thread.ident is not None
        marks.mark(self.thread.ident, "watchdog")

    def stop(self) -> None:
        """End the thread (used by tests and at exit), close the inbox, and
        remove a master's named inbox."""
        self._stopped = True
        try:
            self._stop_lock.release()
        except RuntimeError:
            pass  # released already
        self._send(self.inbox_w, _STOP)
        thread = self.thread
        if thread is not None and thread.ident != native.get_ident():
            thread.join(5)
        if thread is not None and thread.ident is not None:
            marks.unmark(thread.ident)
        if tracking._wake == self._wake:
            tracking._wake = None
        self._selector.close()
        for sock in (self.inbox, self.inbox_w, self._notices):
            if sock is not None:
                sock.close()
        if self.inbox_path is not None:
            try:
                os.unlink(self.inbox_path)
            except OSError:
                pass

    def _wait(self, timeout: float) -> None:
        """Wait ``timeout`` seconds in this OS thread, or until stop()."""
        if self._stop_lock.acquire(True, timeout):
            self._stop_lock.release()

    def _run(self) -> None:
        # Marked by itself too (start() marks it when start_thread returns): a
        # dump taken meanwhile lists it as flask-utd's.
        marks.mark(native.get_ident(), "watchdog")
        try:
            while not self._stopped:
                if not self._look():
                    self._sleep()
                    if self._stopped:
                        break
                # Awake: the next look in half a threshold. After a wake-up by a
                # request too: that request has only just started.
                self._wait(self._interval())
                self.wakeups += 1
        except Exception:
            # A bug must not take the process down: say so; dumps still work.
            log.exception("flask-utd: the watchdog stopped on an error")

    def _interval(self) -> float:
        intervals = [a.threshold / 2 for a in self._workers.values()]
        if self.interval is not None:
            intervals.append(self.interval)
        return min(intervals, default=1.0)

    def _sleep(self) -> None:
        """Block until a request enters this process, a worker's request wakes
        this master, or :meth:`stop`: no timeout, so no wake-up while idle."""
        since = time.monotonic()  # before the look at _current: see _notice
        if self.threshold is not None:
            tracking._wake = self._wake
        if tracking._current and self.threshold is not None:
            # A request entered before it could see _wake: stay awake, and tell
            # the master, as that request did not.
            tracking._wake = None
            self._tell_master(_WOKE, _oldest_start())
            return
        self._tell_master(_SLEEPS, since)
        if self._stopped:
            # stop() sets the flag, then sends: its datagram may have been
            # read by the look just before, and would not wake this select.
            return
        self._selector.select(None)
        self.wakeups += 1
        tracking._wake = None

    def _wake(self) -> None:
        """Run by the first request to enter while this watchdog sleeps (in the
        request's thread): wake it, and tell the master, which then watches
        this worker through the server's accounting. Two datagrams, at most
        once per half threshold."""
        tracking._wake = None
        now = time.monotonic()
        self._send(self.inbox_w, _WOKE, now)
        self._tell_master(_WOKE, now)

    def _tell_master(self, kind: bytes, when: float) -> None:
        if self.master is not None and self._notices is not None:
            try:
                self._notices.sendto(
                    self._notice(kind, when), socket.MSG_DONTWAIT, self.master
                )
            except OSError:
                pass  # no master watchdog (yet), or its inbox is full

    def _send(self, sock: socket.socket, kind: bytes, when: float = 0.0) -> None:
        try:
            sock.send(self._notice(kind, when), socket.MSG_DONTWAIT)
        except OSError:
            pass  # its inbox is full: it is awake anyway

    def _notice(self, kind: bytes, when: float) -> bytes:
        return _NOTICE.pack(
            kind, self.pid, self.threshold or 0.0, when, self.fmt == "json"
        )

    # -- one look ---------------------------------------------------------------

    def _look(self) -> bool:
        """Look at every request in flight (and, in a master, at the workers that
        are awake); return whether to stay awake: something is left to watch,
        or requests were served since the look before."""
        self.looks += 1
        self._read_inbox()
        now = time.monotonic()
        if self.threshold is not None:
            self._look_at_requests(now)
            self._log_ends(now)
        if self._workers:
            self._look_at_workers(now)
        served, self._served_before = self._served_before, self._count_served()
        return bool(
            (self.threshold is not None and tracking._current)
            or self._reported
            or self._workers
            or served != self._served_before
        )

    def _count_served(self) -> int | None:
        if self.served is None:
            return None
        try:
            return self.served()
        except Exception:
            return None

    def _read_inbox(self) -> None:
        while True:
            try:
                data = self.inbox.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(data) != _NOTICE.size:
                continue
            kind, pid, threshold, when, as_json = _NOTICE.unpack(data)
            if pid == self.pid or self.accounting is None or threshold <= 0:
                continue
            awake = self._workers.get(pid)
            if awake is None:
                awake = self._workers[pid] = _Awake(threshold, as_json)
            # The latest notice wins: a worker's request and its watchdog send
            # from two threads, and the times order them (see _sleep).
            if kind == _WOKE:
                awake.woke = max(awake.woke, when)
                awake.threshold, awake.json = threshold, as_json
            elif kind == _SLEEPS:
                awake.slept = max(awake.slept, when)

    def _look_at_requests(self, now: float) -> None:
        assert self.threshold is not None and self.interval is not None
        threshold = self.threshold
        current = dict(tracking._current)
        wanted: dict[int, tracking.Record] = {}
        for ident, record in current.items():
            if now - record[2] < threshold * SAMPLE_AT:
                continue
            reported = self._reported.get(ident)
            if reported is not None and reported.watched.record is record:
                continue
            wanted[ident] = record
        captured = self._capture(set(wanted))
        for ident, record in wanted.items():
            age = now - record[2]
            suspect = self._suspects.get(ident)
            if suspect is None or suspect.record is not record:
                suspect = self._suspects[ident] = _Suspect(record)
            entry = captured.get(ident)
            if entry is None or tracking._current.get(ident) is not record:
                continue  # it ended meanwhile
            suspect.samples.append((now, stack_key(entry["frames"])))
            if age >= threshold:
                self._report(ident, record, entry, suspect, age, now)
        for ident, suspect in list(self._suspects.items()):
            if current.get(ident) is not suspect.record:
                del self._suspects[ident]

    def _capture(self, idents: set[int]) -> dict[int, Thread]:
        """The stacks serving the requests ``idents`` now, in one snapshot. The
        tracker keys a request by its thread's ident, or under gevent by its
        greenlet's id: the source of greenlets gives stacks by that id, so a
        greenlet's request is captured the same way as a thread's."""
        return stack_reports(idents)

    def _report(
        self,
        ident: int,
        record: tracking.Record,
        entry: Thread,
        suspect: _Suspect,
        age: float,
        now: float,
    ) -> None:
        assert self.threshold is not None
        del self._suspects[ident]
        watched = tracking.Watched(record)
        # Watched before the record is written: the request path must see it
        # when the request ends, even if that is while the record is written.
        tracking._watched[ident] = watched
        trace = tracking.trace_of(record[0])
        silent = self._master_reported(ident, watched.started)
        self._reported[ident] = _Reported(watched, entry, trace, age, silent)
        if silent:
            return
        from ..core import watchlog  # a worker loads it when it writes a record

        moved, same_line = compare(suspect.samples)
        self.records += 1
        watchlog.emit(
            watchlog.stuck_record(
                pid=self.pid,
                instance=self.instance,
                role=self.role,
                worker_id=self.worker_id,
                thread=dict(entry),
                request=dict(entry.get("request") or {}),
                trace=trace,
                elapsed_s=age,
                threshold_s=self.threshold,
                moved=moved,
                same_line_s=same_line,
                samples=len(suspect.samples),
            ),
            self.fmt,
        )

    def _master_reported(self, ident: int, started: float) -> bool:
        """Whether the master reported this thread's request through faulthandler
        (while a thread of this process held the GIL)."""
        try:
            with open(sockets.stalled_note_path(self.directory, self.pid)) as f:
                note = json.load(f)
            return bool(ident in note["idents"] and note["at"] >= started)
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _log_ends(self, now: float) -> None:
        for ident, reported in list(self._reported.items()):
            watched = reported.watched
            if watched.ended is None and tracking._current.get(ident) is watched.record:
                continue
            # The request path noted the end; else it ended just now.
            ended = watched.ended if watched.ended is not None else now
            del self._reported[ident]
            if tracking._watched.get(ident) is watched:
                del tracking._watched[ident]
            if reported.silent:
                continue
            from ..core import watchlog

            watchlog.emit(
                watchlog.ended_record(
                    pid=self.pid,
                    instance=self.instance,
                    role=self.role,
                    worker_id=self.worker_id,
                    thread=dict(reported.thread),
                    request=dict(reported.thread.get("request") or {}),
                    trace=reported.trace,
                    total_s=ended - watched.started,
                    reported_at_s=reported.reported_at,
                ),
                self.fmt,
            )

    # -- the master's look at its workers ---------------------------------------

    def _look_at_workers(self, now: float) -> None:
        assert self.accounting is not None
        try:
            busy = self.accounting()
        except Exception:
            log.exception("flask-utd: the watchdog cannot read the server's accounting")
            busy = {}
        for pid, awake in list(self._workers.items()):
            state = busy.get(pid)
            if state is not None:
                awake.worker_id = state.worker_id
            if awake.reported is not None:
                since, started = awake.reported
                if state is None or state.since != since:
                    self._unstalled(pid, awake, now - started, gone=state is None)
            if state is None or (not awake.awake and awake.reported is None):
                del self._workers[pid]
                continue
            if awake.reported is not None or state.since is None:
                continue
            # The worker's own notice bounds the accounting's guess from below.
            started = max(state.since, awake.woke)
            if now - started >= awake.threshold and not self._answers(pid):
                self._capture_worker(pid, awake, state.since, started, now)

    def _answers(self, pid: int) -> bool:
        """Whether the agent of worker ``pid`` answers ``info`` in time: then its
        own watchdog runs too, and reports what it finds itself."""
        from ..core import wire  # only in a master, only when a worker is busy

        path = sockets.socket_path(self.socket_dir, self.instance, pid)
        try:
            wire.call(path, time.monotonic() + self.probe_timeout, "info")
        except TimeoutError:
            return False
        except Exception:
            # No agent to ask (starting, exiting, unsafe): not a stuck thread.
            return True
        return True

    def _capture_worker(
        self, pid: int, awake: _Awake, since: float, started: float, now: float
    ) -> None:
        from ..core.fallback import fallback_stacks

        threads, note = fallback_stacks(
            self.directory, pid, time.monotonic() + FALLBACK_TIMEOUT
        )
        awake.reported = (since, started)
        chosen = _request_threads(threads or [])
        self._leave_note(pid, [t["ident"] for t in chosen], now)
        fmt = "json" if awake.json else "text"
        from ..core import watchlog

        # No stacks (faulthandler wrote nothing): one record all the same.
        targets: list[Thread | None] = list(chosen) or [None]
        for thread in targets:
            self.records += 1
            watchlog.emit(
                watchlog.stalled_record(
                    pid=pid,
                    instance=self.instance,
                    worker_id=awake.worker_id,
                    thread=None if thread is None else dict(thread),
                    busy_s=now - started,
                    threshold_s=awake.threshold,
                    reporter=self.pid,
                    note=note,
                ),
                fmt,
            )

    def _leave_note(self, pid: int, idents: list[int], now: float) -> None:
        path = sockets.stalled_note_path(self.directory, pid)
        try:
            fd = os.open(
                f"{path}.new",
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                0o600,
            )
            with os.fdopen(fd, "w") as f:
                json.dump({"idents": idents, "at": now, "by": self.pid}, f)
            os.replace(f"{path}.new", path)
        except OSError as err:
            log.warning("flask-utd: the watchdog cannot write %s: %s", path, err)

    def _unstalled(self, pid: int, awake: _Awake, busy: float, *, gone: bool) -> None:
        awake.reported = None
        try:
            os.unlink(sockets.stalled_note_path(self.directory, pid))
        except OSError:
            pass
        from ..core import watchlog

        watchlog.emit(
            watchlog.unstalled_record(
                pid=pid,
                instance=self.instance,
                worker_id=awake.worker_id,
                busy_s=busy,
                gone=gone,
                reporter=self.pid,
            ),
            "json" if awake.json else "text",
        )


def _oldest_start() -> float:
    """``time.monotonic()`` when the oldest request in flight here started (now
    if none is left)."""
    return min(
        (r[2] for r in list(tracking._current.values())), default=time.monotonic()
    )


def _datagram_socket() -> socket.socket:
    """A Unix datagram socket of the standard library, whatever gevent patched."""
    return native.unpatched_socket(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))


def _request_threads(threads: list[Thread]) -> list[Thread]:
    """The threads of a faulthandler dump that serve a request: those inside
    the request tracker; failing those, every thread but flask-utd's own."""
    serving = [
        t
        for t in threads
        if not t.get("is_agent")
        and any(
            f["function"] == "__call__"
            and f["file"].endswith(os.path.join("flask_utd", "agent", "tracking.py"))
            for f in t["frames"]
        )
    ]
    if serving:
        return serving
    own = os.path.join("flask_utd", "agent", "")
    return [
        t
        for t in threads
        if not t.get("is_agent") and not any(own in f["file"] for f in t["frames"])
    ]


# -- one per process ------------------------------------------------------------------

_lock = native.allocate_lock()
_watchdog: Watchdog | None = None


def start_watchdog(
    *,
    threshold: float | None,
    fmt: str,
    role: str,
    worker_id: int | None,
    socket_dir: str,
    instance: str,
    accounting: Accounting | None = None,
    served: Served | None = None,
    probe_timeout: float = PROBE_TIMEOUT,
) -> Watchdog | None:
    """Start this process's watchdog unless it already runs.

    :param threshold: ``UTD_WATCHDOG`` resolved
        (:func:`flask_utd.core.config.watchdog_threshold`); ``None``: requests
        are not watched (a master with ``accounting`` still watches its
        workers).
    :param accounting: in a master, the server's accounting of its workers.
    :param served: the server's count of the requests this process served, if
        it keeps one.
    :returns: the watchdog, or ``None`` when there is nothing to watch.
    """
    global _watchdog
    if threshold is None and accounting is None:
        return None
    directory = sockets.instance_dir(socket_dir, instance)
    master = None
    if role == "worker" and instance.isdigit():
        master = sockets.watchdog_inbox_path(directory, int(instance))
    with _lock:
        if _watchdog is not None and _watchdog.pid == os.getpid():
            return _watchdog
        watchdog = Watchdog(
            threshold=threshold,
            fmt=fmt,
            role=role,
            worker_id=worker_id,
            directory=directory,
            socket_dir=socket_dir,
            instance=instance,
            accounting=accounting,
            master=master,
            served=served,
            probe_timeout=probe_timeout,
        )
        watchdog.start()
        _watchdog = watchdog
    log.debug(
        "flask-utd: watchdog of pid %d (%s), threshold %s s",
        os.getpid(),
        role,
        threshold,
    )
    return watchdog


def records_written() -> int | None:
    """How many stuck requests (WARNING records) this process's watchdog has
    logged since it started, or ``None`` when none runs here. A master counts
    the records it wrote of its workers through faulthandler."""
    watchdog = current_watchdog()
    return None if watchdog is None else watchdog.records


def current_watchdog() -> Watchdog | None:
    """This process's watchdog, if one runs."""
    if _watchdog is not None and _watchdog.pid == os.getpid():
        return _watchdog
    return None


def stop_watchdog() -> None:
    """Stop this process's watchdog (used by tests, and at exit)."""
    global _watchdog
    with _lock:
        watchdog = _watchdog
        _watchdog = None
    if watchdog is not None and watchdog.pid == os.getpid():
        watchdog.stop()
    tracking._wake = None
    tracking._watched.clear()


@forks.renew_in_child
def after_fork_in_child() -> None:
    """In a forked child: the parent's watchdog thread does not exist here; its
    sockets are closed (a worker finds its master's inbox by its name). The
    lock is made anew: a thread of the parent may have held it at the fork."""
    global _watchdog, _lock
    _lock = native.allocate_lock()
    parent, _watchdog = _watchdog, None
    if parent is None or parent.pid == os.getpid():
        return
    parent._selector.close()
    for sock in (parent.inbox, parent.inbox_w, parent._notices):
        if sock is not None:
            sock.close()
