from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask.testing import FlaskCliRunner

from flask_utd import utd_bp
from flask_utd.agent.lifecycle import stop_agents
from tests.helpers import SECRET
from tests.helpers import Gunicorns
from tests.helpers import Servers
from tests.helpers import need_uwsgi


@pytest.fixture(autouse=True)
def _no_agent_left() -> Iterator[None]:
    """Every test starts and ends without an agent (or a faulthandler
    registration) in this process, whichever way it started one."""
    stop_agents()
    yield
    stop_agents()


@pytest.fixture
def socket_dir() -> Iterator[str]:
    # Short, because a Unix socket path is limited to 107 bytes.
    path = tempfile.mkdtemp(prefix="utd-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def app(socket_dir: str) -> Iterator[Flask]:
    app = Flask("testapp")
    app.config.update(
        TESTING=True,
        SECRET_KEY=SECRET,
        UTD_SOCKET_DIR=socket_dir,
        UTD_TIMEOUT=2.0,
    )
    app.register_blueprint(utd_bp)
    yield app
    stop_agents()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def uwsgi_bin() -> str:
    return need_uwsgi()


@pytest.fixture
def servers(tmp_path: Path, socket_dir: str) -> Iterator[Servers]:
    s = Servers(tmp_path, socket_dir)
    yield s
    s.stop_all()


@pytest.fixture
def gunicorns(tmp_path: Path, socket_dir: str) -> Iterator[Gunicorns]:
    g = Gunicorns(tmp_path, socket_dir)
    yield g
    g.stop_all()
