"""gunicorn server hooks: import them in ``gunicorn.conf.py``.

::

    # gunicorn.conf.py
    from flask_utd.gunicorn import child_exit, on_exit, post_fork, pre_fork, when_ready

With them, the arbiter answers as role ``master`` and every worker as role
``worker`` with a worker id (1..N, reused when a worker is replaced), all in one
server instance: the arbiter's pid.

- ``when_ready`` (arbiter): starts the arbiter's agent, and the admin listener
  when ``UTD_ADMIN_LISTEN`` is set. With ``--preload`` it uses the settings of
  the app the arbiter loaded; without, the arbiter has no app, and the hooks read
  ``UTD_SOCKET_DIR``, ``UTD_ADMIN_LISTEN`` and ``UTD_SECRET_KEY`` from the
  environment (``UTD_SOCKET_DIR`` else the default per-user directory, which the
  app then falls back to as well).
- ``pre_fork`` (arbiter): gives the worker about to be forked its worker id.
- ``post_fork`` (worker): says where this process sits and starts its agent,
  before the worker loads the app.
- ``child_exit`` (arbiter): removes the socket and files of a worker that died,
  however it died (SIGKILL, timeout, max-requests).
- ``on_exit`` (arbiter): removes the arbiter's own files at shutdown.

gunicorn forks with :func:`os.fork`, so Python's fork hooks run in every worker:
a worker never inherits the arbiter's agent thread or listening socket.

If you define these hooks yourself, call ours from yours.
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import Any

from . import faultdump
from . import servers
from . import sockets
from .config import Settings
from .config import load_settings

log = logging.getLogger("flask_utd")

__all__ = ["when_ready", "pre_fork", "post_fork", "child_exit", "on_exit"]


#: What the hooks read from the environment when the arbiter has no app.
ENVIRONMENT_KEYS = ("UTD_ADMIN_LISTEN", "UTD_SECRET_KEY")


def _settings() -> list[Settings]:
    """The settings of the apps loaded here (``--preload``), else those of the
    environment (``UTD_SOCKET_DIR``, ``UTD_ADMIN_LISTEN``, ``UTD_SECRET_KEY``)."""
    loaded = servers.loaded_settings()
    if loaded:
        return loaded
    config = _environment()
    # A secret is needed only to serve the dump URL (the admin listener).
    return [load_settings(config, need_secret="UTD_ADMIN_LISTEN" in config)]


def _environment() -> dict[str, Any]:
    return {key: os.environ[key] for key in ENVIRONMENT_KEYS if os.environ.get(key)}


def _start_admin(settings: Settings, server_log: Any) -> None:
    """Serve ``/_utd/dump`` from the arbiter on ``UTD_ADMIN_LISTEN``, so that it
    answers when every worker is stuck.

    The arbiter serves no request of the app, and without ``--preload`` has no
    app at all: it serves a small app of its own made from ``settings``, with
    ``utd_bp`` only. gunicorn forks with :func:`os.fork`, so no worker inherits
    the listener (``admin.after_fork_in_child``).
    """
    from flask import Flask

    from . import admin
    from .blueprint import utd_bp

    where = settings.admin_listen
    assert where is not None
    app = Flask("flask_utd.admin")
    # The same configuration the hooks' settings came from, so that setting up
    # this app gives the same settings (the workers' agents use them).
    app.config.update(_environment(), UTD_SOCKET_DIR=settings.socket_dir)
    app.config.setdefault("UTD_SECRET_KEY", settings.secret_key)
    app.register_blueprint(utd_bp)
    try:
        listener = admin.start_admin(app, where)
    except OSError as err:
        log.error(
            "flask-utd: the admin listener cannot listen on UTD_ADMIN_LISTEN (%s);"
            " choose a free address.",
            err,
        )
        return
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
            faultdump.fh_path(directory, pid),
        ):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                log.warning("flask-utd: cannot remove %s: %s", path, err)


def when_ready(server: Any) -> None:
    """gunicorn hook, in the arbiter once it listens: start the arbiter's agent."""
    place = servers.Place("master", None, str(server.pid))
    servers.set_place(place, arbiter=server)
    for settings in _settings():
        servers.start_for_place(settings, place)
        if settings.admin_listen is not None:
            _start_admin(settings, server.log)


def pre_fork(server: Any, worker: Any) -> None:
    """gunicorn hook, in the arbiter before each fork: the worker's id is the
    smallest one that no live worker has."""
    taken = {getattr(w, "utd_worker_id", None) for w in list(server.WORKERS.values())}
    worker.utd_worker_id = next(i for i in itertools.count(1) if i not in taken)


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn hook, in the worker right after the fork."""
    worker_id = getattr(worker, "utd_worker_id", None) or worker.age
    place = servers.Place("worker", worker_id, str(server.pid))
    servers.set_place(place)
    # Started now, not when the worker has loaded the app: a dump taken while a
    # new worker imports the app (a respawn without --preload) shows it doing so
    # instead of leaving it out. An app whose UTD_SOCKET_DIR differs from the
    # hooks' gets a second agent there when it is loaded.
    for settings in _settings():
        servers.start_for_place(settings, place)


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
