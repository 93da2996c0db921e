from __future__ import annotations

import os

import pytest
from flask import Flask

from flask_utd import UTD
from flask_utd import ConfigError
from flask_utd import utd_bp
from flask_utd.config import default_socket_dirs


def test_defaults_are_set_once_at_setup() -> None:
    app = Flask("x")
    app.register_blueprint(utd_bp)
    assert app.config["UTD_TIMEOUT"] == 2.0
    assert app.config["UTD_SOCKET_DIR"] is None
    settings = app.extensions["utd"].settings
    assert settings.socket_dir == default_socket_dirs()[0]
    assert settings.socket_dir.endswith(("flask-utd", f"flask-utd-{os.geteuid()}"))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("UTD_TIMEOUT", "2"),
        ("UTD_TIMEOUT", 0),
        ("UTD_TIMEOUT", True),
        ("UTD_SOCKET_DIR", 3),
    ],
)
def test_bad_values_fail_at_startup_naming_the_key(key: str, value: object) -> None:
    app = Flask("x")
    app.config[key] = value
    with pytest.raises(ConfigError, match=key):
        app.register_blueprint(utd_bp)


def test_blueprint_and_extension_end_in_one_state(socket_dir: str) -> None:
    by_bp = Flask("a")
    by_bp.config["UTD_SOCKET_DIR"] = socket_dir
    by_bp.register_blueprint(utd_bp)
    by_ext = Flask("b")
    by_ext.config["UTD_SOCKET_DIR"] = socket_dir
    UTD(by_ext)
    assert by_bp.extensions["utd"] == by_ext.extensions["utd"]
    assert by_ext.blueprints["utd"] is utd_bp
    assert "utd" in by_ext.cli.commands and "utd" in by_bp.cli.commands
    assert by_ext.url_map is not None


def test_setting_up_twice_is_harmless_or_a_clear_error(socket_dir: str) -> None:
    app = Flask("a")
    app.config["UTD_SOCKET_DIR"] = socket_dir
    ext = UTD(app)
    ext.init_app(app)  # harmless
    state = app.extensions["utd"]
    with pytest.raises(ValueError, match="already registered"):
        app.register_blueprint(utd_bp)
    assert app.extensions["utd"] is state


def test_app_factory_with_one_extension_object(socket_dir: str) -> None:
    utd = UTD()
    apps = []
    for name in ("one", "two"):
        app = Flask(name)
        app.config["UTD_SOCKET_DIR"] = socket_dir
        utd.init_app(app)
        apps.append(app)
    assert apps[0].extensions["utd"] is not apps[1].extensions["utd"]
