"""`flask run` (with and without the reloader) and `python app.py`: one agent per
process that serves requests, role ``process``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo_app.server import ROOT
from flask_utd.core.collector import collect
from flask_utd.core.report import Process
from tests.helpers import wait_for
from tests.lifecycle import files_by_kind
from tests.lifecycle import get

_PORT = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")


class DevServer:
    """A Flask development server in its own process group, stopped by PID."""

    def __init__(self, argv: list[str], log: Path, socket_dir: str) -> None:
        env = dict(
            os.environ,
            DEMO_UTD_SOCKET_DIR=socket_dir,
            DEMO_HELLO_SECONDS="60",
            PYTHONPATH=str(ROOT),
        )
        self.log_path = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(ROOT),
                start_new_session=True,
            )
        match = wait_for(lambda: _PORT.search(log.read_bytes()) or self.proc.poll())
        assert not isinstance(match, int), log.read_text()
        self.port = int(match.group(1))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)


@pytest.fixture
def dev_servers(tmp_path: Path) -> Iterator[list[DevServer]]:
    started: list[DevServer] = []
    yield started
    for server in started:
        server.stop()


FLASK = [sys.executable, "-m", "flask", "--app", "tests.apps.plain:app", "run"]


@pytest.mark.parametrize(
    ("argv", "reloader"),
    [
        ([*FLASK, "--port", "0", "--no-reload"], False),
        ([*FLASK, "--port", "0", "--reload"], True),
        ([sys.executable, "tests/apps/plain.py"], False),
    ],
    ids=["flask-run", "flask-run-reload", "python-app-py"],
)
def test_one_agent_per_serving_process(
    dev_servers: list[DevServer],
    tmp_path: Path,
    socket_dir: str,
    argv: list[str],
    reloader: bool,
) -> None:
    server = DevServer(argv, tmp_path / "server.log", socket_dir)
    dev_servers.append(server)
    # No request yet: no agent (it starts with the first request served).
    assert not os.listdir(socket_dir)
    serving = int(get(server.url("/pid")))
    # Under the reloader, a child serves and the parent only watches files.
    assert (serving != server.proc.pid) is reloader
    # Its own instance, one socket, one faulthandler file; nothing for the parent.
    wait_for(lambda: os.listdir(socket_dir) == [str(serving)])
    assert files_by_kind(socket_dir, serving) == {".sock": {serving}, ".fh": {serving}}

    # A request stuck in a view shows up in the dump of that process.
    caller = threading.Thread(target=_call, args=(server.url("/hello"),), daemon=True)
    caller.start()

    def stuck() -> Process | None:
        report = collect(socket_dir, str(serving), timeout=5)
        (process,) = report["processes"]
        assert process["pid"] == serving and process["status"] == "ok"
        assert process["role"] == "process" and process["worker_id"] is None
        frames = [f["function"] for t in process["threads"] for f in t["frames"]]
        return process if "hello" in frames else None

    wait_for(stuck)
    # Still one agent after more requests, served by other threads.
    assert int(get(server.url("/pid"))) == serving
    assert files_by_kind(socket_dir, serving) == {".sock": {serving}, ".fh": {serving}}


def _call(url: str) -> None:
    try:
        get(url, timeout=3)
    except OSError:
        pass  # it sleeps 60 s: only its presence in the dump matters
