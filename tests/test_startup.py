"""A start-up configuration error (a bad ``UTD_*`` value, no key to sign URLs) is
one line in the server's log, and the app still does not load."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from demo_app.server import UwsgiServer
from flask_utd import ConfigError
from flask_utd import utd_bp
from flask_utd.servers.startup import PREFIX
from flask_utd.servers.startup import one_line
from tests.helpers import Gunicorns
from tests.helpers import Servers
from tests.helpers import wait_for

BAD_TIMEOUT = "UTD_TIMEOUT must be a number of seconds, not 'two'; e.g. 2.0."
NO_KEY = "SECRET_KEY must be a non-empty str or bytes to sign dump URLs"


def _log_of_a_failed_start(start: Callable[[], UwsgiServer]) -> str:
    """Start a server that must fail to load its app; its log once it has
    stopped by itself (its launcher stops it by PID otherwise)."""
    try:
        server = start()
    except RuntimeError as err:  # stopped before it listened (gunicorn --preload)
        return str(err)
    wait_for(lambda: server.proc is not None and server.proc.poll() is not None, 30)
    return server.log()


def _the_one_line(log: str, message: str) -> str:
    lines = [line for line in log.splitlines() if message in line]
    assert len(lines) == 1, log
    assert "Traceback" not in log, log
    return lines[0]


def test_outside_a_server_the_error_is_raised_as_it_is() -> None:
    app = Flask("x")
    app.config.update(SECRET_KEY="s", UTD_TIMEOUT="two")
    with pytest.raises(ConfigError) as raised:
        app.register_blueprint(utd_bp)
    assert type(raised.value) is ConfigError and str(raised.value) == BAD_TIMEOUT
    assert one_line(raised.value) == PREFIX + BAD_TIMEOUT


@pytest.mark.uwsgi
def test_uwsgi_logs_one_line_and_loads_no_app(servers: Servers, uwsgi_bin: str) -> None:
    options = [
        "--module",
        "tests.apps.plain:app",
        "--master",
        "--workers",
        "1",
        "--need-app",
        "--py-call-uwsgi-fork-hooks",
    ]
    log = _log_of_a_failed_start(
        lambda: servers.start(uwsgi_bin, options, env={"DEMO_UTD_TIMEOUT": "two"})
    )
    assert _the_one_line(log, BAD_TIMEOUT) == PREFIX + BAD_TIMEOUT
    assert "unable to load app 0" in log  # and, with need-app, uWSGI stops


@pytest.mark.parametrize("preload", [False, True])
def test_gunicorn_logs_one_line_and_stops(gunicorns: Gunicorns, preload: bool) -> None:
    options = ["-w", "1", *(["--preload"] if preload else []), "tests.apps.plain:app"]
    log = _log_of_a_failed_start(
        lambda: gunicorns.start(options, env={"DEMO_SECRET_KEY": '""'})
    )
    line = _the_one_line(log, NO_KEY)
    assert line.startswith(PREFIX + NO_KEY), line
    if not preload:
        # A worker could not load the app: the arbiter stops, as for an import
        # error, instead of starting workers that fail again.
        assert "Reason: App failed to load." in log
