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

from typing import TYPE_CHECKING
from typing import Any

from .servers import gunicorn as _gunicorn
from .servers.gunicorn import child_exit
from .servers.gunicorn import on_exit
from .servers.gunicorn import post_fork
from .servers.gunicorn import pre_fork

if TYPE_CHECKING:
    from flask import Flask

    from .core.config import Settings

__all__ = ["when_ready", "pre_fork", "post_fork", "child_exit", "on_exit"]


def when_ready(server: Any) -> None:
    """gunicorn hook, in the arbiter once it listens: start the arbiter's agent,
    and the admin listener when ``UTD_ADMIN_LISTEN`` is set."""
    _gunicorn.when_ready(server, admin_app=_admin_app)


def _admin_app(settings: Settings) -> Flask:
    """The arbiter's own app for the admin listener: ``utd_bp`` only, with the
    hooks' ``settings`` (from the environment, or from the app's config with
    ``--preload``); what they do not say comes from the environment too."""
    from flask import Flask

    from .ext.blueprint import utd_bp

    app = Flask("flask_utd.admin")
    app.config.update(
        UTD_SOCKET_DIR=settings.socket_dir,
        UTD_SECRET_KEY=settings.secret_key,
        UTD_TIMEOUT=settings.timeout,
        UTD_URL_MAX_AGE=settings.url_max_age,
        UTD_SLOW_REQUEST=settings.slow_request,
    )
    app.register_blueprint(utd_bp)
    return app
