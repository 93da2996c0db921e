"""gunicorn: what the hooks of :mod:`flask_utd.gunicorn` do, in the arbiter and
in each worker (the hooks themselves, and how to install them, are there)."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any

from ..core import fallback
from ..core import sockets
from ..core.config import Settings
from ..core.config import load_settings
from .place import Place
from .place import set_place
from .setup import loaded_settings
from .setup import served_here
from .setup import start_for_place

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("flask_utd")


def _settings() -> list[Settings]:
    """The settings of the apps loaded here (``--preload``), else those of the
    environment: every ``UTD_*`` variable, read as the app reads it when its
    config does not set it (:func:`~flask_utd.core.config.load_settings`)."""
    loaded = loaded_settings()
    if loaded:
        return loaded
    # A secret is needed only to serve the dump URL (the admin listener).
    return [load_settings({}, need_secret=bool(os.environ.get("UTD_ADMIN_LISTEN")))]


def _start_admin(
    settings: Settings, server_log: Any, admin_app: Callable[[Settings], Flask]
) -> None:
    """Serve ``/_utd/dump`` from the arbiter on ``UTD_ADMIN_LISTEN``, so that it
    answers when every worker is stuck.

    The arbiter serves no request of the app, and without ``--preload`` has no
    app at all: it serves a small app of its own made from ``settings`` by
    ``admin_app``, with ``utd_bp`` only. gunicorn forks with :func:`os.fork`, so
    no worker inherits the listener (``admin.after_fork_in_child``).
    """
    from . import admin

    where = settings.admin_listen
    assert where is not None
    try:
        listener = admin.start_admin(admin_app(settings), where)
    except OSError as err:
        log.error(
            "flask-utd: the admin listener cannot listen on UTD_ADMIN_LISTEN (%s);"
            " choose a free address.",
            err,
        )
        return
    served_here(settings)
    server_log.info(
        "flask-utd: admin listener of the gunicorn arbiter (pid %d) bound to %s",
        os.getpid(),
        listener.address,
    )


def _remove_files(server: Any, pid: int) -> None:
    for settings in _settings():
        directory = sockets.instance_dir(settings.socket_dir, str(server.pid))
        for path in (
            sockets.socket_path(settings.socket_dir, str(server.pid), pid),
            sockets.unsafe_note_path(settings.socket_dir, str(server.pid), pid),
            fallback.fh_path(directory, pid),
            sockets.stalled_note_path(directory, pid),
            sockets.watchdog_inbox_path(directory, pid),
        ):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                log.warning("flask-utd: cannot remove %s: %s", path, err)


def when_ready(server: Any, admin_app: Callable[[Settings], Flask]) -> None:
    """gunicorn hook, in the arbiter once it listens: start the arbiter's agent,
    and the admin listener, serving ``admin_app(settings)``."""
    here = Place("master", None, str(server.pid))
    set_place(here, arbiter=server, kill_after=server.cfg.timeout)
    for settings in _settings():
        start_for_place(settings, here)
        if settings.admin_listen is not None:
            _start_admin(settings, server.log, admin_app)


def pre_fork(server: Any, worker: Any) -> None:
    """gunicorn hook, in the arbiter before each fork: the worker's id is the
    smallest one that no live worker has."""
    taken = {getattr(w, "utd_worker_id", None) for w in list(server.WORKERS.values())}
    worker.utd_worker_id = next(i for i in itertools.count(1) if i not in taken)


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn hook, in the worker right after the fork."""
    worker_id = getattr(worker, "utd_worker_id", None) or worker.age
    here = Place("worker", worker_id, str(server.pid))
    set_place(here, kill_after=server.cfg.timeout, served=lambda: worker.nr)
    # Started now, not when the worker has loaded the app: a dump taken while a
    # new worker imports the app (a respawn without --preload) shows it doing so
    # instead of leaving it out. An app whose UTD_SOCKET_DIR differs from the
    # hooks' gets a second agent there when it is loaded. The watchdog waits for
    # the app's own settings when the arbiter has none (no --preload).
    preloaded = bool(loaded_settings())
    for settings in _settings():
        start_for_place(settings, here, watchdog=preloaded)


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn hook, in the arbiter when a worker has exited: remove its files
    (a worker killed by a signal ran no atexit)."""
    _remove_files(server, worker.pid)


def on_exit(server: Any) -> None:
    """gunicorn hook, in the arbiter as it exits: remove its own files and the
    instance directory if nothing is left in it."""
    _remove_files(server, server.pid)
    for settings in _settings():
        try:
            os.rmdir(sockets.instance_dir(settings.socket_dir, str(server.pid)))
        except OSError:
            pass
