"""The extension object: explicit set-up, and the per-app state it leaves."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from flask import Flask

from .config import Settings
from .config import load_settings
from .servers import current_place
from .servers import setup_admin
from .servers import setup_process
from .servers import start_for_place
from .tracking import RequestTracker


@dataclass
class UTDState:
    """What flask-utd keeps for one app, in ``app.extensions["utd"]``."""

    settings: Settings
    #: Whether the server integration (uWSGI) starts the agents; otherwise the
    #: agent of a process starts at the first request it serves.
    server_managed: bool


class UTD:
    """The flask-utd extension.

    ``app.register_blueprint(utd_bp)`` is all the set-up an app needs; this class
    is for the explicit style and the app-factory pattern::

        utd = UTD()

        def create_app():
            app = Flask(__name__)
            utd.init_app(app)
            return app

    Both ways end in the same state in ``app.extensions["utd"]``.

    :param app: the app to set up now, if given.
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read and check the ``UTD_*`` settings, register ``utd_bp``, wrap
        ``app.wsgi_app`` in the :class:`~flask_utd.tracking.RequestTracker` that
        records which thread serves which request, and start the agent where the
        server loads the app (uWSGI, or a process the gunicorn hooks placed);
        elsewhere the agent of a process starts at the first request it serves.
        Calling it twice is harmless.

        :raises ConfigError: a ``UTD_*`` value is wrong; the message names the key.
        """
        if "utd" in app.extensions:
            return
        settings = load_settings(app.config)
        app.extensions["utd"] = UTDState(settings, server_managed=False)
        if "utd" not in app.blueprints:
            from .blueprint import utd_bp

            app.register_blueprint(utd_bp)
        state: UTDState = app.extensions["utd"]
        state.server_managed = setup_process(settings)
        app.wsgi_app = RequestTracker(  # type: ignore[method-assign]
            app.wsgi_app,
            capture_query=settings.capture_query,
            on_new_process=(
                None if state.server_managed else partial(_start_here, settings)
            ),
        )
        setup_admin(app, settings)


def _start_here(settings: Settings) -> None:
    # The first request a process serves is the first moment known to be in a
    # serving process, after any fork.
    start_for_place(settings, current_place())
