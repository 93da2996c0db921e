from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from demo_app.server import ROOT
from demo_app.server import UwsgiServer
from flask_utd import utd_bp
from flask_utd.agent.lifecycle import stop_agents
from flask_utd.core.collector import collect


def wait_for(
    condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {condition}")
        time.sleep(interval)


def as_another_uid(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a Python that imports first, then drops to uid and gid 65534
    (``nobody``) before the lines after the ``# as nobody`` marker; needs root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another uid")
    before, after = code.split("# as nobody\n")
    program = before + "os.setgid(65534); os.setuid(65534)\n" + after
    return subprocess.run(
        [sys.executable, "-c", program, *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def open_modes(socket_dir: str, socket_path: str) -> None:
    """Open the directories and the socket to everyone, as by mistake: only the
    peer check is left to refuse another uid."""
    os.chmod(socket_dir, 0o755)
    os.chmod(os.path.dirname(socket_path), 0o755)
    os.chmod(socket_path, 0o666)


def lean_dump(socket_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m flask_utd dump --socket-dir DIR ARGS`` in a new process."""
    return subprocess.run(
        [sys.executable, "-m", "flask_utd", "dump", "--socket-dir", socket_dir, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


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
        SECRET_KEY="test-secret",
        UTD_SOCKET_DIR=socket_dir,
        UTD_TIMEOUT=2.0,
    )
    app.register_blueprint(utd_bp)
    yield app
    stop_agents()


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


def _venv_uwsgis() -> dict[str, str]:
    """``{python version: uwsgi binary}``: this venv's, and those in .venvs/."""
    found: dict[str, str] = {}
    own = Path(sys.executable).parent / "uwsgi"
    if own.exists():
        found[f"{sys.version_info[0]}.{sys.version_info[1]}"] = str(own)
    for venv in sorted((ROOT / ".venvs").glob("3.*")):
        binary = venv / "bin" / "uwsgi"
        if binary.exists():
            found.setdefault(venv.name, str(binary))
    return found


UWSGIS = _venv_uwsgis()
SUPPORTED = ["3.10", "3.11", "3.12", "3.13"]


def need_uwsgi(version: str | None = None) -> str:
    """The uwsgi binary for ``version`` (default: this Python's); with ``CI`` set,
    a missing one fails the test instead of skipping it."""
    version = version or f"{sys.version_info[0]}.{sys.version_info[1]}"
    binary = UWSGIS.get(version)
    if binary is None:
        message = f"uWSGI for Python {version} is not installed (run `make test`)"
        if (
            os.environ.get("CI")
            and version == f"{sys.version_info[0]}.{sys.version_info[1]}"
        ):
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture
def uwsgi_bin() -> str:
    return need_uwsgi()


class Servers:
    """Starts servers for one test and stops them all at its end."""

    def __init__(self, tmp_path: Path, socket_dir: str) -> None:
        self.tmp_path = tmp_path
        self.socket_dir = socket_dir
        self.started: list[UwsgiServer] = []

    def start(
        self,
        binary: str,
        options: list[str],
        env: dict[str, str] | None = None,
    ) -> UwsgiServer:
        return self.launch(
            UwsgiServer, binary, options, {"DEMO_HELLO_SECONDS": "60", **(env or {})}
        )

    def launch(
        self,
        kind: type[UwsgiServer],
        binary: str,
        options: list[str],
        env: dict[str, str],
    ) -> UwsgiServer:
        """Start a server of class ``kind`` (uWSGI, or gunicorn), stopped at the
        test's end; the demo app's socket directory is this test's."""
        full_env = {
            "DEMO_UTD_SOCKET_DIR": self.socket_dir,
            "PYTHONPATH": str(ROOT),
            **env,
        }
        log = self.tmp_path / f"{kind.__name__.lower()}-{len(self.started)}.log"
        server = kind(binary, options, log, env=full_env)
        self.started.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def servers(tmp_path: Path, socket_dir: str) -> Iterator[Servers]:
    s = Servers(tmp_path, socket_dir)
    yield s
    s.stop_all()


def report_of(server: UwsgiServer, socket_dir: str, **kwargs: Any) -> dict[str, Any]:
    return collect(socket_dir, str(server.pid), **kwargs)
