"""The extension object, for explicit set-up and the app-factory pattern."""

from __future__ import annotations

from flask import Flask

from ..core.errors import SetupError
from .blueprint import utd_bp


class UTD:
    """The flask-utd extension.

    ``app.register_blueprint(utd_bp)`` is all the set-up an app needs; this class
    is for the explicit style and the app-factory pattern::

        utd = UTD()

        def create_app():
            app = Flask(__name__)
            app.config.from_prefixed_env()  # SECRET_KEY, UTD_* ...
            utd.init_app(app)  # after the config is loaded
            return app

    Both ways end in the same state in ``app.extensions["utd"]``.

    :param app: the app to set up now, if given.
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register ``utd_bp`` on ``app``, which sets flask-utd up
        (:func:`flask_utd.ext.setup.set_up`). Call it after the app's config
        is loaded: the ``UTD_*`` settings and ``SECRET_KEY`` are read now.

        :raises ConfigError: a ``UTD_*`` value is wrong; the message names the key.
        :raises SetupError: flask-utd is already set up on ``app`` (by
            ``register_blueprint(utd_bp)`` or an earlier ``init_app``).
        """
        if "utd" in app.extensions or "utd" in app.blueprints:
            raise SetupError(
                f"flask-utd is already set up on the app {app.name!r}: set it up"
                " once, either with app.register_blueprint(utd_bp) or with"
                " UTD(app) / utd.init_app(app), not both."
            )
        app.register_blueprint(utd_bp)
