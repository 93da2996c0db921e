"""The agent and RPyC: settings that RPyC reads from the environment change nothing.

RPyC reads ``RPYC_BIND_THREADS`` from the environment into its default settings
when it is imported; with it, every message carries two thread ids in front. The
agent and :func:`flask_utd.agent.rpc.connect` pin that setting (and every other
one they rely on), so a server or a client started with it still dumps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from rpyc.core.protocol import DEFAULT_CONFIG

from demo_app.server import ROOT
from flask_utd.agent.lifecycle import start_agent
from flask_utd.agent.lifecycle import stop_agents
from flask_utd.agent.rpc import CLIENT_CONFIG
from flask_utd.agent.rpc import SERVER_CONFIG
from flask_utd.agent.rpc import connect
from flask_utd.core import sockets
from flask_utd.core import wire
from tests.conftest import wait_for

INSTANCE = "4646"

#: An agent alone in a process, until its stdin closes.
AGENT = (
    "import sys\n"
    "from flask_utd.agent.lifecycle import start_agent\n"
    "start_agent(sys.argv[1], sys.argv[2], role='process', worker_id=None)\n"
    "sys.stdin.read()\n"
)


#: What RPyC fills in for each connection.
RUNTIME = {"connid", "credentials", "endpoints"}


@pytest.mark.parametrize(
    "config", [SERVER_CONFIG, CLIENT_CONFIG], ids=["server", "client"]
)
def test_every_rpyc_setting_is_pinned(config: dict[str, object]) -> None:
    assert set(DEFAULT_CONFIG) - RUNTIME <= set(config)
    assert not RUNTIME & set(config)
    assert config["bind_threads"] is False


def bound_env() -> dict[str, str]:
    return dict(os.environ, RPYC_BIND_THREADS="true", PYTHONPATH=str(ROOT))


@pytest.fixture
def bound_agent(socket_dir: str) -> Iterator[tuple[int, str]]:
    """``(pid, socket path)`` of an agent in a process started with
    ``RPYC_BIND_THREADS=true``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", AGENT, socket_dir, INSTANCE],
        stdin=subprocess.PIPE,
        cwd=ROOT,
        env=bound_env(),
    )
    path = sockets.socket_path(socket_dir, INSTANCE, proc.pid)
    try:
        wait_for(lambda: os.path.exists(path) or proc.poll() is not None)
        assert proc.poll() is None, "the agent's process ended"
        yield proc.pid, path
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_an_agent_started_with_rpyc_bind_threads_answers_the_wire_client(
    bound_agent: tuple[int, str],
) -> None:
    pid, path = bound_agent
    report = json.loads(wire.call(path, time.monotonic() + 5, "dump", "{}"))
    assert report["pid"] == pid and report["status"] == "ok"


def test_an_agent_started_with_rpyc_bind_threads_answers_rpyc(
    bound_agent: tuple[int, str],
) -> None:
    pid, path = bound_agent
    conn = connect(path, time.monotonic() + 5)
    try:
        report = json.loads(conn.root.dump("{}"))
    finally:
        conn.close()
    assert report["pid"] == pid and report["status"] == "ok"


def test_a_client_started_with_rpyc_bind_threads_gets_its_dump(
    socket_dir: str,
) -> None:
    agent = start_agent(socket_dir, INSTANCE, role="process", worker_id=None)
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "import json, sys, time\n"
                "from flask_utd.agent.rpc import connect\n"
                "c = connect(sys.argv[1], time.monotonic() + 5)\n"
                "print(json.loads(c.root.dump('{}'))['pid'])\n"
                "c.close()\n",
                agent.path,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env=bound_env(),
        )
    finally:
        stop_agents()
    assert out.stdout.strip() == str(os.getpid()), out.stderr
