"""Where this process sits in the server: uWSGI or gunicorn master or worker, or
anything else.

The agent starts in the process that loads the app (the uWSGI master, or a worker
under ``lazy-apps``), again in every worker after uWSGI forks it (``postfork``);
under gunicorn, the hooks of :mod:`flask_utd.gunicorn` start it in the arbiter
(``when_ready``) and in every worker (``post_fork``, or when the worker loads the
app); under any other server, at the first request a process serves. It never
starts in a process that serves no request, such as ``flask utd dump``.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any

from .config import Settings
from .frame_locals import LocalsRequest
from .snapshot import ghost_message
from .snapshot import ghost_threads

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("flask_utd")

FORK_HOOKS_OPTION = "py-call-uwsgi-fork-hooks"


@dataclass(frozen=True)
class Place:
    """What this process is, for the agent and the report."""

    #: ``"master"``, ``"worker"`` or ``"process"``; under uWSGI also ``"mule"``
    #: (``worker_id`` is the mule id) and ``"spooler"``.
    role: str
    worker_id: int | None
    #: The server instance: the master's pid, else this process's pid, as text.
    instance: str


def _uwsgi() -> Any | None:
    """The ``uwsgi`` module, which exists only inside a uWSGI process."""
    try:
        import uwsgi
    except ImportError:
        return None
    return uwsgi


def uwsgi_option(name: str) -> bool:
    """Whether the uWSGI flag ``name`` is on in this server's configuration."""
    uwsgi = _uwsgi()
    if uwsgi is None:
        return False
    value = uwsgi.opt.get(name)
    if isinstance(value, list):
        value = value[-1]
    if isinstance(value, bytes):
        return value.strip().lower() not in (b"", b"0", b"false", b"no", b"off")
    return bool(value)


# Set by the gunicorn hooks: (pid of the process that set it, its place). A
# forked child inherits it with the parent's pid, which tells it is not its own.
_given_place: tuple[int, Place] | None = None
# The gunicorn arbiter, in the arbiter only (for its roster of workers).
_arbiter: tuple[int, Any] | None = None
# The settings of every app set up in this process (inherited by forked children,
# which is how a gunicorn worker forked from a --preload arbiter knows them).
_loaded_settings: list[Settings] = []


def set_place(place: Place, arbiter: Any = None) -> None:
    """Say where this process sits (the gunicorn hooks do); it holds for this
    process only, not for the children it forks.

    :param arbiter: the gunicorn ``Arbiter``, in the arbiter.
    """
    global _given_place, _arbiter
    _given_place = (os.getpid(), place)
    if arbiter is not None:
        _arbiter = (os.getpid(), arbiter)


def loaded_settings() -> list[Settings]:
    """The settings of the apps set up in this process or before it was forked."""
    return list(_loaded_settings)


def current_place() -> Place:
    """Where this process sits: uWSGI or gunicorn master or worker, else a plain
    process."""
    if _given_place is not None and _given_place[0] == os.getpid():
        return _given_place[1]
    uwsgi = _uwsgi()
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
    return Place("process", None, str(os.getpid()))


def roster() -> list[dict[str, Any]] | None:
    """The server's own list of workers (pid, id), where it has one."""
    if _arbiter is not None and _arbiter[0] == os.getpid():
        return [
            {"pid": pid, "worker_id": getattr(w, "utd_worker_id", None)}
            for pid, w in list(_arbiter[1].WORKERS.items())
        ]
    uwsgi = _uwsgi()
    if uwsgi is None:
        return None
    return [{"pid": w["pid"], "worker_id": w["id"]} for w in uwsgi.workers()]


_MASTER_UNSAFE = (
    "the uWSGI master runs no agent: uWSGI runs without `py-call-uwsgi-fork-hooks`,"
    " and a thread in the master would be copied into every worker it forks (a"
    " worker forked while that thread holds the GIL deadlocks). Add"
    " `py-call-uwsgi-fork-hooks = true` to the [uwsgi] section of uwsgi.ini."
)


def locals_policy(settings: Settings) -> LocalsRequest | None:
    """What a dump that asks for locals gets under ``settings``, or ``None``."""
    if not settings.locals:
        return None
    return LocalsRequest(
        settings.locals_frames, settings.locals_repr, settings.locals_budget
    )


def start_for_place(
    settings: Settings, place: Place, unsafe: str | None = None
) -> None:
    """Start the agent of this process, or leave a note saying why it cannot run."""
    try:
        # Imported here, not at the top: the agent needs RPyC (about 90 ms to
        # import), and a process that never starts one, such as ``flask utd
        # dump``, should not pay for it (docs/performance.md).
        from . import agent

        if (
            place.role == "master"
            and _uwsgi() is not None
            and not uwsgi_option(FORK_HOOKS_OPTION)
        ):
            log.warning("flask-utd: %s", _MASTER_UNSAFE)
            agent.leave_unsafe_note(
                settings.socket_dir,
                place.instance,
                role=place.role,
                worker_id=place.worker_id,
                message=_MASTER_UNSAFE,
            )
            return
        agent.start_agent(
            settings.socket_dir,
            place.instance,
            role=place.role,
            worker_id=place.worker_id,
            unsafe=unsafe,
            fault_signal=settings.fault_signal,
            locals_policy=locals_policy(settings),
        )
    except Exception:
        # Never take the server down: a server without thread dumps still serves.
        log.exception("flask-utd: the agent of pid %d could not start", os.getpid())


_postfork_settings: list[Settings] = []


def _postfork() -> None:
    """In a uWSGI worker, right after uWSGI forked it from the master."""
    from . import agent

    # Without Python's fork hooks, os.register_at_fork handlers do not run.
    from . import endpoint

    agent.after_fork_in_child()
    endpoint.after_fork_in_child()
    if "flask_utd.admin" in sys.modules:
        from . import admin

        admin.after_fork_in_child()
    ghosts = ghost_threads()
    unsafe = ghost_message(ghosts) if ghosts else None
    if unsafe:
        log.warning("flask-utd: worker pid %d: %s", os.getpid(), unsafe)
    place = current_place()
    for settings in _postfork_settings:
        start_for_place(settings, place, unsafe)


def setup_process(settings: Settings) -> bool:
    """Start the agent where the app is loaded, if this is a uWSGI process or a
    process that the gunicorn hooks placed.

    :returns: whether the agent's start is taken care of here; ``False`` means:
        start it at the first request.
    """
    if settings not in _loaded_settings:
        _loaded_settings.append(settings)
    if _given_place is not None and _given_place[0] == os.getpid():
        start_for_place(settings, _given_place[1])
        return True
    uwsgi = _uwsgi()
    if uwsgi is None:
        return False
    place = current_place()
    if (
        sys.version_info >= (3, 13)
        and uwsgi_option("py-call-osafterfork")
        and not uwsgi_option(FORK_HOOKS_OPTION)
    ):
        log.warning(
            "flask-utd: on Python 3.13, uWSGI's `py-call-osafterfork` aborts every"
            " worker right after the fork, with or without flask-utd; replace it with"
            " `py-call-uwsgi-fork-hooks = true` in uwsgi.ini."
        )
    if place.role == "master":
        # Workers forked from here start their own agent after the fork.
        if settings not in _postfork_settings:
            if not _postfork_settings:
                from uwsgidecorators import postfork

                postfork(_postfork)
            _postfork_settings.append(settings)
    start_for_place(settings, place)
    return True


_ADMIN_NEEDS_HOOKS = (
    "UTD_ADMIN_LISTEN is set but the uWSGI master serves no admin listener: uWSGI"
    " runs without `py-call-uwsgi-fork-hooks`, and a worker forked while a master"
    " thread holds the GIL deadlocks (uWSGI issue 2387). Add"
    " `py-call-uwsgi-fork-hooks = true` to the [uwsgi] section of uwsgi.ini."
)


def setup_admin(app: Flask, settings: Settings) -> None:
    """Start the admin listener (``UTD_ADMIN_LISTEN``) if this is a uWSGI master
    that may run threads; otherwise say why not, and go on serving."""
    where = settings.admin_listen
    uwsgi = _uwsgi()
    if where is None or uwsgi is None:
        # Outside uWSGI (flask run, gunicorn, the flask CLI) there is no master
        # to serve it; docs/endpoint.rst says so.
        return
    place = current_place()
    if place.role != "master":
        log.warning(
            "flask-utd: UTD_ADMIN_LISTEN is set but pid %d, which loaded the app,"
            " is not a uWSGI master: the admin listener needs `master = true` and"
            " the app loaded in the master (no `lazy-apps`).",
            os.getpid(),
        )
        return
    if not uwsgi_option(FORK_HOOKS_OPTION):
        log.warning("flask-utd: %s", _ADMIN_NEEDS_HOOKS)
        return
    from . import admin

    try:
        listener = admin.start_admin(app, where)
    except OSError as err:
        # Never take the server down: the app still serves, and so does its
        # own /_utd/dump.
        log.error(
            "flask-utd: the admin listener cannot listen on UTD_ADMIN_LISTEN=%r"
            " (%s); choose a free address.",
            app.config["UTD_ADMIN_LISTEN"],
            err,
        )
        return
    message = (
        f"flask-utd: admin listener of the uWSGI master (pid {os.getpid()}) bound to"
        f" {listener.address}"
    )
    uwsgi.log(message)
    log.info(message)
