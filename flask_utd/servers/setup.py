"""Where the agent and the admin listener start, whatever the server.

Under uWSGI the agent starts in every worker after uWSGI forks it (``postfork``),
or where the app is loaded (a worker under ``lazy-apps``); in the master, which
loads the app, it and the admin listener start once the master has forked its
first process (under ``daemonize2`` the process that loaded the app is not the
master that stays). Under gunicorn, the hooks of :mod:`flask_utd.gunicorn` start
it in the arbiter (``when_ready``) and in every worker (``post_fork``, or when the
worker loads the app); under any other server, at the first request a process
serves. It never starts in a process that serves no request, such as ``flask utd
dump``."""

from __future__ import annotations

import logging
import os
import sys
import threading
from functools import partial
from typing import TYPE_CHECKING

from ..agent.frame_locals import LocalsRequest
from ..agent.ghosts import ghost_message
from ..agent.ghosts import ghost_threads
from ..core.config import Settings
from ..core.config import parse_listen
from ..core.config import watchdog_threshold
from ..core.errors import ConfigError
from . import uwsgi as uwsgi_server
from .place import Place
from .place import accounting
from .place import current_place
from .place import given_place
from .place import gunicorn_worker_without_hooks
from .place import kill_timer
from .place import served_counter

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("flask_utd")

# The settings of every app set up in this process (inherited by forked children,
# which is how a gunicorn worker forked from a --preload arbiter knows them).
_loaded_settings: list[Settings] = []
# The settings whose admin listener this process serves; a gunicorn worker,
# forked from the arbiter, compares its app's with them.
_served: list[Settings] = []

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


_GUNICORN_WITHOUT_HOOKS = (
    "gunicorn runs without flask-utd's hooks, so its arbiter runs no agent: a dump"
    " has no stack of the arbiter, no worker ids, and no admin listener"
    " (UTD_ADMIN_LISTEN). Import the hooks in gunicorn.conf.py: `from"
    " flask_utd.gunicorn import child_exit, on_exit, post_fork, pre_fork,"
    " when_ready` (docs/gunicorn.rst)."
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
    place = current_place()
    if not uwsgi_server.fork_hooks_on():
        # The master runs no flask-utd code after loading the app (no Python
        # hook runs there without the fork hooks), so its workers leave its note:
        # under its pid as it is now, after any daemonizing fork. Before the
        # agent starts: a report never has this worker without the master.
        _leave_note(settings, place.instance, _MASTER_UNSAFE)
    start_for_place(settings, place, unsafe)


def _leave_note(settings: Settings, master: str, message: str) -> bool:
    """Leave the note that stands for the master ``master`` in the report, unless
    there is one; return whether this call left it."""
    from ..agent import lifecycle

    try:
        return lifecycle.leave_unsafe_note(
            settings.socket_dir,
            master,
            pid=int(master),
            role="master",
            worker_id=None,
            message=message,
            keep=True,
        )
    except OSError:
        log.exception("flask-utd: the note for the master (pid %s) failed", master)
        return False


def _start_in_master(settings: Settings) -> None:
    """In the uWSGI master, once it has forked its first process: start its
    agent, unless the master holds thread states of threads it does not have
    (a ``daemonize2`` fork), whose stacks cannot be read safely."""
    ghosts = ghost_threads()
    unsafe = None
    if ghosts:
        unsafe = (
            _daemonized_with_threads(ghosts)
            if uwsgi_server.daemonized_after_loading()
            else ghost_message(ghosts)
        )
        log.warning("flask-utd: %s", unsafe)
    start_for_place(settings, current_place(), unsafe)


def _daemonized_with_threads(ghosts: list[threading.Thread]) -> str:
    names = ", ".join(sorted(repr(t.name) for t in ghosts))
    return (
        "uWSGI forked this master to daemonize it (`daemonize2`) after the app had"
        f" started {len(ghosts)} thread(s) ({names}): they do not run in the master"
        " any more, and reading its stacks could crash it, so it is not dumped. Use"
        " `daemonize` instead of `daemonize2` (uWSGI then daemonizes before it loads"
        " the app), or start those threads in each worker (a postfork hook)."
    )


def _start_in_gunicorn_worker_without_hooks(settings: Settings, place: Place) -> None:
    """Start the agent of a gunicorn worker that the hooks did not place, in its
    arbiter's instance, and leave the note that stands for the arbiter in the
    report: the first worker to write it says once in the log what is missing."""
    start_for_place(settings, place)
    if _leave_note(settings, place.instance, _GUNICORN_WITHOUT_HOOKS):
        log.warning("flask-utd: %s", _GUNICORN_WITHOUT_HOOKS)


def start_at_first_request(settings: Settings) -> None:
    """Start the agent of a process that no server integration started it in, at
    the first request it serves (the first moment known to be in a serving
    process, after any fork); say once if its ``UTD_ADMIN_LISTEN`` cannot run."""
    hookless = gunicorn_worker_without_hooks()
    if hookless is not None:
        _start_in_gunicorn_worker_without_hooks(settings, hookless)
        return
    start_for_place(settings, current_place())
    # Called once per app and process (the request tracker's first call), so
    # the warning is said once too.
    if settings.admin_listen is not None:
        log.warning(
            "flask-utd: UTD_ADMIN_LISTEN is set but pid %d serves the app outside"
            " uWSGI and gunicorn, with no master process to run the admin listener:"
            " none runs (the app's own /_utd/dump still answers). It runs in a uWSGI"
            " master, or in gunicorn's arbiter with flask-utd's hooks.",
            os.getpid(),
        )


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
        hookless = gunicorn_worker_without_hooks()
        if hookless is None:
            return False
        # The worker loads the app (no --preload): start its agent now.
        _start_in_gunicorn_worker_without_hooks(settings, hookless)
        return True
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
    if place.role != "master":
        start_for_place(settings, place)
        return True
    if first_time:
        # Workers forked from here start their own agent after the fork.
        uwsgi_server.on_postfork(partial(_start_in_worker, settings))
        if uwsgi_server.fork_hooks_on():
            # Not now: see on_master_fork (daemonize2).
            uwsgi_server.on_master_fork(partial(_start_in_master, settings))
        else:
            log.warning("flask-utd: %s", _MASTER_UNSAFE)
    return True


def served_here(settings: Settings) -> None:
    """Record that this process serves the admin listener of ``settings``."""
    _served.append(settings)


def _check_gunicorn_worker(settings: Settings, place: Place) -> None:
    """In a gunicorn worker the hooks placed, as it sets its app up: warn when the
    app's ``UTD_ADMIN_LISTEN`` or signing key is not the arbiter's, whose admin
    listener serves the dump URL. Only worker 1 says so: one line per server."""
    if place.worker_id != 1:
        return
    if (
        settings.admin_listen is not None
        and not any(served.admin_listen == settings.admin_listen for served in _served)
        and not _from_environment(settings.admin_listen)
    ):
        log.warning(
            "flask-utd: UTD_ADMIN_LISTEN=%s is set in the app's config, but"
            " gunicorn's arbiter, which serves the admin listener, does not load the"
            " app (no --preload) and reads UTD_ADMIN_LISTEN from its environment"
            " only: no admin listener runs there. Set UTD_ADMIN_LISTEN and"
            " UTD_SECRET_KEY in gunicorn's environment instead (docs/gunicorn.rst),"
            " or run gunicorn with --preload.",
            written_address(settings.admin_listen),
        )
        return
    for served in _served:
        if served.secret_key != settings.secret_key:
            log.warning(
                "flask-utd: the app signs dump URLs with another key than gunicorn's"
                " arbiter, whose admin listener (%s) checks them: its links get 403"
                " there. Set UTD_SECRET_KEY in gunicorn's environment, not in the"
                " app's config, so that both read the same key (docs/gunicorn.rst).",
                written_address(served.admin_listen),
            )
            return


def _from_environment(where: tuple[str, int] | str) -> bool:
    """Whether ``UTD_ADMIN_LISTEN`` in the environment says ``where`` (the arbiter
    then tried it, and logged why it could not)."""
    try:
        return parse_listen(os.environ.get("UTD_ADMIN_LISTEN") or None) == where
    except ConfigError:
        return False


def written_address(where: tuple[str, int] | str | None) -> str:
    """An address as ``UTD_ADMIN_LISTEN`` writes it."""
    if where is None:
        return "None"
    if isinstance(where, tuple):
        host = f"[{where[0]}]" if ":" in where[0] else where[0]
        return f"{host}:{where[1]}"
    return f"unix:{where}"


def setup_admin(app: Flask, settings: Settings) -> None:
    """Start the admin listener (``UTD_ADMIN_LISTEN``) if this is a uWSGI master
    that may run threads; otherwise say why not, and go on serving.

    Under gunicorn the arbiter serves it (:mod:`flask_utd.gunicorn`); a worker
    warns when its app's setting would not take effect there. Elsewhere the
    warning comes at the first request (:func:`start_at_first_request`): a
    process that never serves one, such as ``flask utd url``, stays quiet.
    """
    given = given_place()
    if given is not None and given.role == "worker":
        _check_gunicorn_worker(settings, given)
        return
    where = settings.admin_listen
    if where is None or uwsgi_server.uwsgi_module() is None:
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
    # Like the master's agent, once the master has forked (daemonize2).
    uwsgi_server.on_master_fork(partial(_start_admin_in_master, app, where))


def _start_admin_in_master(app: Flask, where: tuple[str, int] | str) -> None:
    from . import admin

    try:
        listener = admin.start_admin(app, where)
    except OSError as err:
        # Never take the server down: the app still serves, and so does its
        # own /_utd/dump.
        log.error(
            "flask-utd: the admin listener cannot listen on UTD_ADMIN_LISTEN=%s"
            " (%s); choose a free address.",
            written_address(where),
            err,
        )
        return
    message = (
        f"flask-utd: admin listener of the uWSGI master (pid {os.getpid()}) bound to"
        f" {listener.address}"
    )
    uwsgi_server.log_to_server(message)
    log.info(message)
