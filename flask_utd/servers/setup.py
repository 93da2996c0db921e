"""Where the agent and the admin listener start, whatever the server.

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
from functools import partial
from typing import TYPE_CHECKING

from ..agent.frame_locals import LocalsRequest
from ..core.config import Settings
from ..core.config import watchdog_threshold
from . import uwsgi as uwsgi_server
from .place import Place
from .place import accounting
from .place import current_place
from .place import given_place
from .place import kill_timer
from .place import served_counter

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("flask_utd")

# The settings of every app set up in this process (inherited by forked children,
# which is how a gunicorn worker forked from a --preload arbiter knows them).
_loaded_settings: list[Settings] = []

_MASTER_UNSAFE = (
    "the uWSGI master runs no agent: uWSGI runs without `py-call-uwsgi-fork-hooks`,"
    " and a thread in the master would be copied into every worker it forks (a"
    " worker forked while that thread holds the GIL deadlocks). Add"
    " `py-call-uwsgi-fork-hooks = true` to the [uwsgi] section of uwsgi.ini."
)

_ADMIN_NEEDS_HOOKS = (
    "UTD_ADMIN_LISTEN is set but the uWSGI master serves no admin listener: uWSGI"
    " runs without `py-call-uwsgi-fork-hooks`, and a worker forked while a master"
    " thread holds the GIL deadlocks (uWSGI issue 2387). Add"
    " `py-call-uwsgi-fork-hooks = true` to the [uwsgi] section of uwsgi.ini."
)


def loaded_settings() -> list[Settings]:
    """The settings of the apps set up in this process or before it was forked."""
    return list(_loaded_settings)


def locals_policy(settings: Settings) -> LocalsRequest | None:
    """What a dump that asks for locals gets under ``settings``, or ``None``."""
    if not settings.locals:
        return None
    return LocalsRequest(
        settings.locals_frames, settings.locals_repr, settings.locals_budget
    )


def start_for_place(
    settings: Settings,
    place: Place,
    unsafe: str | None = None,
    *,
    watchdog: bool = True,
) -> None:
    """Start the agent of this process, or leave a note saying why it cannot run;
    and its watchdog, where the agent may read stacks.

    :param watchdog: start the watchdog too (``False`` where ``settings`` come
        from the environment and the app, loaded later, has its own).
    """
    try:
        # Imported here, not at the top: the agent needs RPyC (about 90 ms to
        # import), and a process that never starts one, such as ``flask utd
        # dump``, should not pay for it (docs/performance.md).
        from ..agent import lifecycle

        if (
            place.role == "master"
            and uwsgi_server.uwsgi_module() is not None
            and not uwsgi_server.fork_hooks_on()
        ):
            log.warning("flask-utd: %s", _MASTER_UNSAFE)
            lifecycle.leave_unsafe_note(
                settings.socket_dir,
                place.instance,
                role=place.role,
                worker_id=place.worker_id,
                message=_MASTER_UNSAFE,
            )
            return
        lifecycle.start_agent(
            settings.socket_dir,
            place.instance,
            role=place.role,
            worker_id=place.worker_id,
            unsafe=unsafe,
            fault_signal=settings.fault_signal,
            locals_policy=locals_policy(settings),
        )
        if watchdog and unsafe is None:
            start_watchdog(settings, place)
    except Exception:
        # Never take the server down: a server without thread dumps still serves.
        log.exception("flask-utd: the agent of pid %d could not start", os.getpid())


def start_watchdog(settings: Settings, place: Place) -> None:
    """Start the watchdog of this process: its threshold is ``UTD_WATCHDOG``,
    or derived from the server's kill timer; in a master it also watches the
    workers through the server's accounting."""
    if settings.watchdog is None:
        return
    from ..agent import watchdog

    watchdog.start_watchdog(
        threshold=watchdog_threshold(
            settings.watchdog, kill_timer(), settings.slow_request
        ),
        fmt=settings.watchdog_format,
        role=place.role,
        worker_id=place.worker_id,
        socket_dir=settings.socket_dir,
        instance=place.instance,
        accounting=accounting() if place.role == "master" else None,
        served=served_counter(),
        probe_timeout=min(watchdog.PROBE_TIMEOUT, settings.timeout),
    )


def _start_in_worker(settings: Settings, unsafe: str | None) -> None:
    start_for_place(settings, current_place(), unsafe)


def setup_process(settings: Settings) -> bool:
    """Start the agent where the app is loaded, if this is a uWSGI process or a
    process that the gunicorn hooks placed.

    :returns: whether the agent's start is taken care of here; ``False`` means:
        start it at the first request.
    """
    first_time = settings not in _loaded_settings
    if first_time:
        _loaded_settings.append(settings)
    given = given_place()
    if given is not None:
        start_for_place(settings, given)
        return True
    if uwsgi_server.uwsgi_module() is None:
        return False
    place = current_place()
    if (
        sys.version_info >= (3, 13)
        and uwsgi_server.option("py-call-osafterfork")
        and not uwsgi_server.fork_hooks_on()
    ):
        log.warning(
            "flask-utd: on Python 3.13, uWSGI's `py-call-osafterfork` aborts every"
            " worker right after the fork, with or without flask-utd; replace it with"
            " `py-call-uwsgi-fork-hooks = true` in uwsgi.ini."
        )
    if place.role == "master" and first_time:
        # Workers forked from here start their own agent after the fork.
        uwsgi_server.on_postfork(partial(_start_in_worker, settings))
    start_for_place(settings, place)
    return True


def setup_admin(app: Flask, settings: Settings) -> None:
    """Start the admin listener (``UTD_ADMIN_LISTEN``) if this is a uWSGI master
    that may run threads; otherwise say why not, and go on serving."""
    where = settings.admin_listen
    if where is None or uwsgi_server.uwsgi_module() is None:
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
    if not uwsgi_server.fork_hooks_on():
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
    uwsgi_server.log_to_server(message)
    log.info(message)
