"""What registering ``utd_bp`` does to an app: its settings, its state in
``app.extensions["utd"]``, the request tracker, and the agent's start."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from flask import Flask

from ..agent.tracking import RequestTracker
from ..core.config import Settings
from ..core.config import load_settings
from ..core.errors import ConfigError
from ..core.errors import SetupError
from ..servers.setup import setup_admin
from ..servers.setup import setup_process
from ..servers.setup import start_at_first_request
from ..servers.startup import startup_error


@dataclass
class UTDState:
    """What flask-utd keeps for one app, in ``app.extensions["utd"]``."""

    settings: Settings
    #: Whether the server integration (uWSGI) starts the agents; otherwise the
    #: agent of a process starts at the first request it serves.
    server_managed: bool


def set_up(app: Flask) -> UTDState:
    """Read and check the ``UTD_*`` settings, wrap ``app.wsgi_app`` in the
    :class:`~flask_utd.agent.tracking.RequestTracker` that records which thread
    serves which request, and start the agent where the server loads the app
    (uWSGI, or a process the gunicorn hooks placed); elsewhere the agent of a
    process starts at the first request it serves.

    :raises ConfigError: a ``UTD_*`` value is wrong; the message names the key.
    :raises SetupError: flask-utd is already set up on ``app``.
    """
    if "utd" in app.extensions:
        raise SetupError(
            f"flask-utd is already set up on the app {app.name!r}: set it up once,"
            " either with app.register_blueprint(utd_bp) or with UTD(app) /"
            " utd.init_app(app), not both."
        )
    try:
        settings = load_settings(app.config)
    except ConfigError as err:
        # One line in the server's log, not a traceback; the app still fails.
        raise startup_error(err) from None
    server_managed = setup_process(settings)
    state = UTDState(settings, server_managed)
    app.extensions["utd"] = state
    app.wsgi_app = RequestTracker(  # type: ignore[method-assign]
        app.wsgi_app,
        capture_query=settings.capture_query,
        on_new_process=(
            None if server_managed else partial(start_at_first_request, settings)
        ),
    )
    setup_admin(app, settings)
    return state
