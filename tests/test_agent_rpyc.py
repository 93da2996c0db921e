"""The agent and RPyC: only RPyC's public API, and none of its defaults.

The agent cuts RPyC's frames itself, with the constants of
:mod:`flask_utd.core.wire`: they must be what RPyC's ``Channel`` writes. RPyC
reads ``RPYC_BIND_THREADS`` from the environment into its default settings when
it is imported; with it, every message carries two thread ids in front. The
agent and :func:`flask_utd.agent.rpc.connect` pin that setting (and every other
one), so a server or a client started with it still dumps.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from rpyc.core.channel import Channel
from rpyc.core.protocol import DEFAULT_CONFIG
from rpyc.core.stream import Stream

import flask_utd
from demo_app.server import ROOT
from flask_utd.agent import server as agent_server
from flask_utd.agent.lifecycle import start_agent
from flask_utd.agent.lifecycle import stop_agents
from flask_utd.agent.rpc import CLIENT_CONFIG
from flask_utd.agent.rpc import SERVER_CONFIG
from flask_utd.agent.rpc import connect
from flask_utd.agent.server import _cut_frame
from flask_utd.core import sockets
from flask_utd.core import wire
from tests.helpers import wait_for

INSTANCE = "4646"

#: An agent alone in a process, until its stdin closes.
AGENT = (
    "import sys\n"
    "from flask_utd.agent.lifecycle import start_agent\n"
    "start_agent(sys.argv[1], sys.argv[2], role='process', worker_id=None)\n"
    "sys.stdin.read()\n"
)


class _Written(Stream):  # type: ignore[misc]
    """A stream that keeps what a channel writes."""

    MAX_IO_CHUNK = 64000

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


@pytest.mark.parametrize("size", [0, 1, 2999, 3001, 64000, 200_000])
def test_frames_are_cut_as_rpyc_writes_them(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    stream = _Written()
    Channel(stream).send(payload)
    compressed = size > Channel.COMPRESSION_THRESHOLD
    data = zlib.compress(payload, Channel.COMPRESSION_LEVEL) if compressed else payload
    ours = wire.FRAME_HEADER.pack(len(data), compressed) + data + wire.FLUSHER
    assert stream.data == ours
    if size == 0:
        return  # the agent refuses an empty frame (it is no RPyC message)
    inbox = bytearray(stream.data + b"next")
    if size <= agent_server.MAX_FRAME:
        assert _cut_frame(inbox) == payload and inbox == b"next"


def _private_uses(tree: ast.AST) -> set[str]:
    """``_names`` read as attributes (``obj._name``), dunders aside."""
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.endswith("__")
    }


def _own_names(tree: ast.AST) -> set[str]:
    """Names the module defines: functions, classes, attributes, slots."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__
    return names


def test_no_private_rpyc_name_is_used() -> None:
    """What flask_utd imports from RPyC is public, and every ``obj._name`` read
    in a module that imports RPyC is one of flask_utd's own."""
    package = Path(flask_utd.__file__).parent
    trees = {path: ast.parse(path.read_text()) for path in package.rglob("*.py")}
    own = set().union(*(_own_names(tree) for tree in trees.values()))
    for path, tree in trees.items():
        imported = [
            (node.module or "", [a.name for a in node.names])
            if isinstance(node, ast.ImportFrom)
            else (node.names[0].name, [])
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
        ]
        rpyc = [(m, n) for m, n in imported if m.split(".")[0] == "rpyc"]
        for module, names in rpyc:
            parts = module.split(".") + names
            assert not [p for p in parts if p.startswith("_")], (path, module)
        if rpyc:
            assert _private_uses(tree) <= own, path


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


def test_a_forked_child_forgets_the_parents_agent_and_sends_nothing(
    socket_dir: str,
) -> None:
    """The child closes its copies of the parent's sockets, its client's
    included, without a word on them: the parent's client is still served."""
    parent = start_agent(socket_dir, INSTANCE, role="process", worker_id=None)
    conn = connect(parent.path, time.monotonic() + 30)
    try:
        assert json.loads(conn.root.info())["pid"] == os.getpid()
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() in a process with threads.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child leaves through os._exit
            code = 1
            try:
                child = start_agent(
                    socket_dir, INSTANCE, role="process", worker_id=None
                )
                mine = wire.call(child.path, time.monotonic() + 5, "info")
                theirs = wire.call(parent.path, time.monotonic() + 5, "info")
                if child is not parent and child.path != parent.path:
                    pids = (json.loads(mine)["pid"], json.loads(theirs)["pid"])
                    code = 0 if pids == (os.getpid(), os.getppid()) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert json.loads(conn.root.info())["pid"] == os.getpid()
    finally:
        conn.close()
        stop_agents()
    assert not parent.thread.is_alive()
