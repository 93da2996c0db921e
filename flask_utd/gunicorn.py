"""gunicorn server hooks: import them in ``gunicorn.conf.py``.

::

    # gunicorn.conf.py
    from flask_utd.gunicorn import child_exit, on_exit, post_fork, pre_fork, when_ready

With them, the arbiter answers as role ``master`` and every worker as role
``worker`` with a worker id (1..N, reused when a worker is replaced), all in one
server instance: the arbiter's pid.

- ``when_ready`` (arbiter): starts the arbiter's agent. With ``--preload`` it
  uses the settings of the app the arbiter loaded; without, the arbiter has no
  app, and the hooks use the ``UTD_SOCKET_DIR`` environment variable (else the
  default per-user directory), which the app then falls back to as well.
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


def _settings() -> list[Settings]:
    """The settings of the apps loaded here (``--preload``), else the defaults
    (``UTD_SOCKET_DIR`` from the environment)."""
    loaded = servers.loaded_settings()
    # Without --preload the arbiter has no app, and serves no dump URL: no secret.
    return loaded or [load_settings({}, need_secret=False)]


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
    # TODO(issue 3): start the arbiter's admin listener here, so that
    # GET /_utd/dump answers when every worker is stuck. It serves the app's
    # blueprint, so it needs the app in the arbiter: with --preload, call
    # admin.start_admin(app, settings.admin_listen) for each app loaded here
    # (servers would keep the apps next to _loaded_settings); without
    # --preload the arbiter has no app, and loading one here is --preload.


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
