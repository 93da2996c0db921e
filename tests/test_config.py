from __future__ import annotations

import os

import pytest
from flask import Flask

from flask_utd import UTD
from flask_utd import ConfigError
from flask_utd import SetupError
from flask_utd import utd_bp
from flask_utd.core.config import default_socket_dirs
from flask_utd.core.config import load_settings
from flask_utd.core.config import watchdog_threshold


def test_defaults_are_set_once_at_setup() -> None:
    app = Flask("x")
    app.config["SECRET_KEY"] = "s"
    app.register_blueprint(utd_bp)
    assert app.config["UTD_TIMEOUT"] == 2.0
    assert app.config["UTD_URL_MAX_AGE"] == 300
    assert app.config["UTD_ADMIN_LISTEN"] is None
    assert app.config["UTD_SECRET_KEY"] is None
    assert app.config["UTD_SOCKET_DIR"] is None
    assert app.config["UTD_WATCHDOG"] == "auto"
    assert app.config["UTD_WATCHDOG_FORMAT"] == "text"
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
        ("UTD_SECRET_KEY", ""),
        ("UTD_SECRET_KEY", 12345),
        ("SECRET_KEY", ""),
        ("UTD_URL_MAX_AGE", "300"),
        ("UTD_URL_MAX_AGE", 0),
        ("UTD_URL_MAX_AGE", -5),
        ("UTD_ADMIN_LISTEN", "9191"),
        ("UTD_ADMIN_LISTEN", "127.0.0.1"),
        ("UTD_ADMIN_LISTEN", "127.0.0.1:99999"),
        ("UTD_ADMIN_LISTEN", "unix:relative.sock"),
        ("UTD_ADMIN_LISTEN", 9191),
        ("UTD_WATCHDOG", "12"),
        ("UTD_WATCHDOG", 0),
        ("UTD_WATCHDOG", -1.5),
        ("UTD_WATCHDOG", True),
        ("UTD_WATCHDOG", False),
        ("UTD_WATCHDOG", float("inf")),
        ("UTD_WATCHDOG", float("nan")),
        ("UTD_WATCHDOG_FORMAT", "yaml"),
        ("UTD_WATCHDOG_FORMAT", None),
    ],
)
def test_bad_values_fail_at_startup_naming_the_key(key: str, value: object) -> None:
    app = Flask("x")
    if key != "SECRET_KEY":
        app.config["SECRET_KEY"] = "s"
    app.config[key] = value
    with pytest.raises(ConfigError, match=key):
        app.register_blueprint(utd_bp)


def test_blueprint_and_extension_end_in_one_state(socket_dir: str) -> None:
    by_bp = Flask("a")
    by_bp.config.update(UTD_SOCKET_DIR=socket_dir, SECRET_KEY="s")
    by_bp.register_blueprint(utd_bp)
    by_ext = Flask("b")
    by_ext.config.update(UTD_SOCKET_DIR=socket_dir, SECRET_KEY="s")
    UTD(by_ext)
    assert by_bp.extensions["utd"] == by_ext.extensions["utd"]
    assert by_ext.blueprints["utd"] is utd_bp
    assert "utd" in by_ext.cli.commands and "utd" in by_bp.cli.commands
    assert by_ext.url_map is not None


def test_setting_up_twice_is_a_clear_error(socket_dir: str) -> None:
    app = Flask("a")
    app.config.update(UTD_SOCKET_DIR=socket_dir, SECRET_KEY="s")
    ext = UTD(app)
    state = app.extensions["utd"]
    with pytest.raises(SetupError, match="already set up on the app 'a'"):
        ext.init_app(app)
    with pytest.raises(SetupError, match="not both"):
        UTD().init_app(app)
    with pytest.raises(ValueError, match="already registered"):
        app.register_blueprint(utd_bp)
    assert app.extensions["utd"] is state
    by_bp = Flask("b")
    by_bp.config.update(UTD_SOCKET_DIR=socket_dir, SECRET_KEY="s")
    by_bp.register_blueprint(utd_bp)
    with pytest.raises(SetupError, match="already set up on the app 'b'"):
        UTD(by_bp)


def test_app_factory_with_one_extension_object(socket_dir: str) -> None:
    utd = UTD()
    apps = []
    for name in ("one", "two"):
        app = Flask(name)
        app.config.update(UTD_SOCKET_DIR=socket_dir, SECRET_KEY="s")
        utd.init_app(app)
        apps.append(app)
    assert apps[0].extensions["utd"] is not apps[1].extensions["utd"]


def test_a_missing_secret_fails_at_startup_naming_both_keys() -> None:
    app = Flask("x")
    with pytest.raises(ConfigError, match="neither UTD_SECRET_KEY nor SECRET_KEY"):
        app.register_blueprint(utd_bp)
    assert "utd" not in app.extensions
    with pytest.raises(ConfigError, match="UTD_SECRET_KEY nor SECRET_KEY"):
        UTD(Flask("y"))


def test_utd_secret_key_wins_over_secret_key() -> None:
    app = Flask("x")
    app.config.update(SECRET_KEY="app", UTD_SECRET_KEY="utd")
    app.register_blueprint(utd_bp)
    settings = app.extensions["utd"].settings
    assert settings.secret_key == "utd"
    assert "'utd'" not in repr(settings) and "secret_key" not in repr(settings)
    only_app = Flask("y")
    only_app.config.update(SECRET_KEY=b"app")
    only_app.register_blueprint(utd_bp)
    assert only_app.extensions["utd"].settings.secret_key == b"app"


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (None, None),
        ("127.0.0.1:9191", ("127.0.0.1", 9191)),
        ("[::1]:9191", ("::1", 9191)),
        ("localhost:0", ("localhost", 0)),
        ("unix:/run/app/admin.sock", "/run/app/admin.sock"),
        ("unix:///run/app/admin.sock", "/run/app/admin.sock"),
    ],
)
def test_admin_listen_forms(value: object, parsed: object) -> None:
    app = Flask("x")
    app.config.update(SECRET_KEY="s", UTD_ADMIN_LISTEN=value)
    app.register_blueprint(utd_bp)
    assert app.extensions["utd"].settings.admin_listen == parsed


@pytest.mark.parametrize(
    ("value", "expected"), [(12, 12.0), (0.25, 0.25), (None, None), ("auto", "auto")]
)
def test_watchdog_values(value: object, expected: object) -> None:
    settings = load_settings({"SECRET_KEY": "s", "UTD_WATCHDOG": value})
    assert settings.watchdog == expected


@pytest.mark.parametrize(
    ("setting", "kill_after", "slow", "expected"),
    [
        # "auto": 60 % of harakiri / gunicorn's timeout, so that a look every
        # half threshold finds the request by 90 % of the kill timer.
        ("auto", 30, 5.0, 18.0),
        ("auto", 4, 5.0, 2.4),
        ("auto", 120, 5.0, 72.0),
        # No kill timer (none set, or 0: gunicorn's "no timeout"): UTD_SLOW_REQUEST.
        ("auto", None, 5.0, 5.0),
        ("auto", 0, 7.0, 7.0),
        ("auto", None, 0.0, None),
        # A number is taken as it is, even above the kill timer; None is off.
        (10.0, 4, 5.0, 10.0),
        (None, 30, 5.0, None),
    ],
)
def test_watchdog_threshold_rule(
    setting: object, kill_after: float | None, slow: float, expected: float | None
) -> None:
    assert watchdog_threshold(setting, kill_after, slow) == expected  # type: ignore[arg-type]
    if expected is not None and setting == "auto" and kill_after:
        # Seen (at the latest 1.5 thresholds in) before the kill.
        assert 1.5 * expected <= 0.9 * kill_after + 1e-9


def test_a_setting_the_config_lacks_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, socket_dir: str
) -> None:
    """One rule for every UTD_* setting: the app's config, then the environment
    (as gunicorn's arbiter without --preload reads it), then the default."""
    monkeypatch.setenv("UTD_SECRET_KEY", "from-env")
    monkeypatch.setenv("UTD_ADMIN_LISTEN", "127.0.0.1:9191")
    monkeypatch.setenv("UTD_SOCKET_DIR", socket_dir)
    monkeypatch.setenv("UTD_TIMEOUT", "3.5")
    monkeypatch.setenv("UTD_CAPTURE_QUERY", "true")
    monkeypatch.setenv("UTD_FAULTHANDLER_SIGNAL_OFFSET", "null")
    monkeypatch.setenv("UTD_URL_MAX_AGE", "")  # empty: unset
    app = Flask("x")
    app.config.update(SECRET_KEY="app-key", UTD_TIMEOUT=4.0)
    app.register_blueprint(utd_bp)
    settings = app.extensions["utd"].settings
    # UTD_SECRET_KEY from the environment wins over the app's SECRET_KEY, as
    # it does in the arbiter: both sign and check with the same key.
    assert settings.secret_key == "from-env"
    assert settings.admin_listen == ("127.0.0.1", 9191)
    assert settings.socket_dir == socket_dir
    assert settings.timeout == 4.0  # the app's config first
    assert settings.capture_query is True
    assert settings.fault_signal is None
    assert settings.url_max_age == 300
    assert app.config["UTD_SECRET_KEY"] == "from-env"
    assert app.config["UTD_TIMEOUT"] == 4.0


def test_the_apps_config_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UTD_SECRET_KEY", "from-env")
    monkeypatch.setenv("UTD_ADMIN_LISTEN", "127.0.0.1:9191")
    app = Flask("x")
    # None set in the config is a choice too: no admin listener here.
    app.config.update(UTD_SECRET_KEY="from-config", UTD_ADMIN_LISTEN=None)
    app.register_blueprint(utd_bp)
    settings = app.extensions["utd"].settings
    assert settings.secret_key == "from-config"
    assert settings.admin_listen is None


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("UTD_TIMEOUT", "fast", "environment variable UTD_TIMEOUT='fast' cannot"),
        ("UTD_TIMEOUT", "true", "UTD_TIMEOUT is set in the environment"),
        ("UTD_LOCALS_BUDGET", "9", "UTD_LOCALS_BUDGET is set in the environment"),
        ("UTD_ADMIN_LISTEN", "9191", "UTD_ADMIN_LISTEN is set in the environment"),
    ],
)
def test_a_bad_value_in_the_environment_is_named_as_such(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str, match: str
) -> None:
    monkeypatch.setenv(key, value)
    app = Flask("x")
    app.config["SECRET_KEY"] = "s"
    with pytest.raises(ConfigError, match=match):
        app.register_blueprint(utd_bp)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("auto", "auto"), (" auto ", "auto"), ("12", 12.0), ("null", None)],
)
def test_watchdog_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: object
) -> None:
    """As gunicorn's arbiter without --preload reads them: a number or null as
    JSON, the word auto as written, the format as text."""
    monkeypatch.setenv("UTD_WATCHDOG", raw)
    monkeypatch.setenv("UTD_WATCHDOG_FORMAT", "json")
    settings = load_settings({"SECRET_KEY": "s"})
    assert settings.watchdog == expected
    assert settings.watchdog_format == "json"
    monkeypatch.setenv("UTD_WATCHDOG", "soon")
    with pytest.raises(ConfigError, match="UTD_WATCHDOG"):
        load_settings({"SECRET_KEY": "s"})
