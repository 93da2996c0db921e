"""Where this process sits in the server: uWSGI or gunicorn master or worker, or
anything else; and the server's own list of its workers."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

from .uwsgi import uwsgi_module


@dataclass(frozen=True)
class Place:
    """What this process is, for the agent and the report."""

    #: ``"master"``, ``"worker"`` or ``"process"``; under uWSGI also ``"mule"``
    #: (``worker_id`` is the mule id) and ``"spooler"``.
    role: str
    worker_id: int | None
    #: The server instance: the master's pid, else this process's pid, as text.
    instance: str


# Set by the gunicorn hooks: (pid of the process that set it, its place). A
# forked child inherits it with the parent's pid, which tells it is not its own.
_given_place: tuple[int, Place] | None = None
# The gunicorn arbiter, in the arbiter only (for its roster of workers).
_arbiter: tuple[int, Any] | None = None


def set_place(place: Place, arbiter: Any = None) -> None:
    """Say where this process sits (the gunicorn hooks do); it holds for this
    process only, not for the children it forks.

    :param arbiter: the gunicorn ``Arbiter``, in the arbiter.
    """
    global _given_place, _arbiter
    _given_place = (os.getpid(), place)
    if arbiter is not None:
        _arbiter = (os.getpid(), arbiter)


def given_place() -> Place | None:
    """Where the gunicorn hooks said this process sits, or ``None``."""
    if _given_place is not None and _given_place[0] == os.getpid():
        return _given_place[1]
    return None


def gunicorn_worker_without_hooks() -> Place | None:
    """This process's place if it is a gunicorn worker that the hooks of
    :mod:`flask_utd.gunicorn` did not place, else ``None``.

    gunicorn's worker installs its own signal handlers, bound methods of the
    ``Worker``, before it loads the app; that worker knows its arbiter's pid
    (``ppid``). It is this process's worker only if this process is its child,
    not a process the worker forked in turn.
    """
    base = sys.modules.get("gunicorn.workers.base")
    if base is None or given_place() is not None:
        return None
    worker = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if not isinstance(worker, base.Worker):
        return None
    arbiter = getattr(worker, "ppid", None)
    if worker.pid != os.getpid() or arbiter != os.getppid():
        return None
    return Place("worker", None, str(arbiter))


def current_place() -> Place:
    """Where this process sits: uWSGI or gunicorn master or worker, else a plain
    process."""
    given = given_place()
    if given is not None:
        return given
    uwsgi = uwsgi_module()
    if uwsgi is not None:
        master = uwsgi.masterpid()
        worker_id = uwsgi.worker_id()
        instance = str(master or os.getpid())
        if worker_id > 0:
            return Place("worker", worker_id, instance)
        if master == os.getpid():
            return Place("master", None, instance)
        mule_id = uwsgi.mule_id() if hasattr(uwsgi, "mule_id") else 0
        if mule_id:
            return Place("mule", mule_id, instance)
        if hasattr(uwsgi, "i_am_the_spooler") and uwsgi.i_am_the_spooler():
            return Place("spooler", None, instance)
        return Place("process", None, instance)
    return gunicorn_worker_without_hooks() or Place("process", None, str(os.getpid()))


def roster() -> list[dict[str, Any]] | None:
    """The server's own list of workers (pid, id), where it has one."""
    if _arbiter is not None and _arbiter[0] == os.getpid():
        return [
            {"pid": pid, "worker_id": getattr(w, "utd_worker_id", None)}
            for pid, w in list(_arbiter[1].WORKERS.items())
        ]
    uwsgi = uwsgi_module()
    if uwsgi is None:
        return None
    return [{"pid": w["pid"], "worker_id": w["id"]} for w in uwsgi.workers()]
