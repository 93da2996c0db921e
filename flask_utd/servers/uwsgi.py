"""uWSGI: its module, its options, and the ``postfork`` hook that starts the agent
in every worker.

uWSGI forks its workers in C. Unless it runs with ``py-call-uwsgi-fork-hooks``,
Python's fork handlers do not run in a worker, and the worker keeps the thread
states of the master's threads (docs/uwsgi.rst): the ``postfork`` hook renews what
flask-utd keeps (:func:`flask_utd.agent.forks.after_fork`) and checks for such
"ghost" threads before the worker's agent starts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any

from ..agent import forks
from ..agent.ghosts import ghost_message
from ..agent.ghosts import ghost_threads

if TYPE_CHECKING:
    from ..agent.watchdog import WorkerBusy

log = logging.getLogger("flask_utd")

#: The option that makes uWSGI run Python's fork hooks around its forks.
FORK_HOOKS_OPTION = "py-call-uwsgi-fork-hooks"


def uwsgi_module() -> Any | None:
    """The ``uwsgi`` module, which exists only inside a uWSGI process."""
    try:
        import uwsgi
    except ImportError:
        return None
    return uwsgi


def option(name: str) -> bool:
    """Whether the uWSGI flag ``name`` is on in this server's configuration."""
    uwsgi = uwsgi_module()
    if uwsgi is None:
        return False
    value = uwsgi.opt.get(name)
    if isinstance(value, list):
        value = value[-1]
    if isinstance(value, bytes):
        return value.strip().lower() not in (b"", b"0", b"false", b"no", b"off")
    return bool(value)


def harakiri() -> float | None:
    """uWSGI's ``harakiri`` in seconds (the worker serving a request longer is
    killed), or ``None`` when it is not set or 0."""
    uwsgi = uwsgi_module()
    if uwsgi is None:
        return None
    value = uwsgi.opt.get("harakiri")
    if isinstance(value, list):
        value = value[-1]
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


def served_by_this_worker() -> int:
    """How many requests this uWSGI worker has served (``uwsgi.workers()``)."""
    uwsgi = uwsgi_module()
    me = uwsgi.worker_id() if uwsgi is not None else 0
    for worker in uwsgi.workers() if uwsgi is not None else ():
        if worker.get("id") == me:
            return int(worker.get("requests", 0))
    return 0


class BusyWorkers:
    """uWSGI's accounting of its workers, for the master's watchdog: which is
    busy, and since when (:class:`~flask_utd.agent.watchdog.WorkerBusy`).

    ``uwsgi.workers()`` gives each worker's status and its count of requests
    served, not when its current request started: a worker seen busy with the
    same count as at the previous look is busy with the same request, and one
    seen busy anew started it after the previous look.
    """

    def __init__(self) -> None:
        # A worker first seen busy may have been so since the previous look (or
        # since the master started): the earliest it can have started. The
        # watchdog bounds that with the worker's own notice.
        self._last = time.monotonic()
        #: pid -> (requests served, busy since or None)
        self._seen: dict[int, tuple[int, float | None]] = {}

    def __call__(self) -> dict[int, WorkerBusy]:
        from ..agent.watchdog import WorkerBusy

        uwsgi = uwsgi_module()
        now = time.monotonic()
        previous, self._last = self._last, now
        found: dict[int, WorkerBusy] = {}
        seen: dict[int, tuple[int, float | None]] = {}
        for worker in uwsgi.workers() if uwsgi is not None else ():
            pid = worker.get("pid")
            if not pid:
                continue
            status = worker.get("status")
            busy = status in (b"busy", "busy")
            count = worker.get("requests", 0)
            since = None
            if busy:
                old = self._seen.get(pid)
                since = old[1] if old is not None and old[0] == count else None
                if since is None:
                    since = previous
            seen[pid] = (count, since)
            found[pid] = WorkerBusy(worker.get("id"), since)
        self._seen = seen
        return found


def fork_hooks_on() -> bool:
    """Whether uWSGI runs Python's fork hooks (``py-call-uwsgi-fork-hooks``)."""
    return option(FORK_HOOKS_OPTION)


#: What each worker does right after uWSGI forks it, once its inherited state
#: is renewed: given the ghost message (``None`` when the worker is safe).
_in_worker: list[Callable[[str | None], None]] = []


def on_postfork(start: Callable[[str | None], None]) -> None:
    """Call ``start(unsafe)`` in every worker uWSGI forks from now on, where
    ``unsafe`` says why its stacks cannot be read (ghost threads), or is ``None``.
    Needs a uWSGI master (``uwsgidecorators.postfork``)."""
    if not _in_worker:
        from uwsgidecorators import postfork

        postfork(_postfork)
    if start not in _in_worker:
        _in_worker.append(start)


def _postfork() -> None:
    """In a uWSGI worker, right after uWSGI forked it from the master."""
    # Without Python's fork hooks, os.register_at_fork handlers did not run.
    forks.after_fork()
    ghosts = ghost_threads()
    unsafe = ghost_message(ghosts) if ghosts else None
    if unsafe:
        log.warning("flask-utd: worker pid %d: %s", os.getpid(), unsafe)
    for start in _in_worker:
        start(unsafe)


#: What the master does once it has forked its first process, each with no
#: argument, in the order registered.
_in_master: list[Callable[[], None]] = []
#: The pid of the master that has done them (a reload execs a new interpreter).
_master_ready_in: list[int] = []


def on_master_fork(start: Callable[[], None]) -> None:
    """Call ``start()`` in the uWSGI master once it has forked its first process
    (a worker, mule, spooler or gateway), not before.

    Under ``daemonize2`` uWSGI loads the app, then forks to daemonize, and the
    master goes on in the child under a new pid, without the threads of the
    process that loaded the app. uWSGI forks nothing of its own before it
    daemonizes, so once the master has forked a process it stays the master.

    Needs ``py-call-uwsgi-fork-hooks``: the master then runs Python's fork hooks
    around each fork (``os.register_at_fork``'s ``after_in_parent``).
    """
    if not _in_master:
        os.register_at_fork(after_in_parent=_master_forked)
    if start not in _in_master:
        _in_master.append(start)


def _master_forked() -> None:
    """In a process that has just forked: if it is the master and the first time
    since it became the master, do what :func:`on_master_fork` registered."""
    uwsgi = uwsgi_module()
    pid = os.getpid()
    if uwsgi is None or uwsgi.masterpid() != pid or _master_ready_in == [pid]:
        return  # a worker forking in turn, or done already
    _master_ready_in[:] = [pid]
    # A master that was forked to daemonize did not run Python's fork handlers:
    # renew now what the process that loaded the app may have left.
    forks.after_fork()
    for start in list(_in_master):
        try:
            start()
        except Exception:  # never take the master down
            log.exception("flask-utd: starting in the uWSGI master failed")


def daemonized_after_loading() -> bool:
    """Whether uWSGI runs with ``daemonize2``: it forked the master to daemonize
    it after the app was loaded."""
    uwsgi = uwsgi_module()
    return uwsgi is not None and bool(uwsgi.opt.get("daemonize2"))


def log_to_server(message: str) -> None:
    """Write ``message`` to uWSGI's own log (where its start-up lines are)."""
    uwsgi = uwsgi_module()
    if uwsgi is not None:
        uwsgi.log(message)
