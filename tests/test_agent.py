"""The agent in this process: its socket, its restrictions, its answers."""

from __future__ import annotations

import gc
import json
import os
import socket
import stat
import threading
import warnings
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest
import rpyc

from flask_utd import SocketDirError
from flask_utd.agent.lifecycle import Agent
from flask_utd.agent.lifecycle import start_agent
from flask_utd.agent.lifecycle import stop_agents
from flask_utd.agent.rpc import connect
from flask_utd.core.collector import collect
from flask_utd.core.sockets import ensure_private_dir
from tests.helpers import as_another_uid
from tests.helpers import open_modes

INSTANCE = "4242"


@pytest.fixture
def agent(socket_dir: str) -> Iterator[Agent]:
    a = start_agent(socket_dir, INSTANCE, role="process", worker_id=None)
    yield a
    stop_agents()


def test_socket_and_directories_are_private(socket_dir: str, agent: Agent) -> None:
    for path in (socket_dir, os.path.dirname(agent.path)):
        st = os.lstat(path)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    st = os.lstat(agent.path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert agent.path.endswith(f"/{INSTANCE}/{os.getpid()}.sock")


def test_agent_is_one_named_daemon_thread(agent: Agent) -> None:
    assert agent.thread.name == "utd-agent" and agent.thread.daemon
    assert agent.thread.is_alive()
    # Starting again in the same process is a no-op.
    assert (
        start_agent(
            agent.path.rsplit("/", 2)[0], INSTANCE, role="process", worker_id=None
        )
        is agent
    )


def test_dump_is_taken_by_the_agent_thread(socket_dir: str, agent: Agent) -> None:
    report = collect(socket_dir, INSTANCE, timeout=5)
    (process,) = report["processes"]
    assert process["status"] == "ok" and process["pid"] == os.getpid()
    dumping = [
        t
        for t in process["threads"]
        if any(f["function"] == "process_report" for f in t["frames"])
    ]
    assert [t["ident"] for t in dumping] == [agent.thread.ident]
    assert dumping[0]["is_agent"] and dumping[0]["name"] == "utd-agent"
    # The caller (this test's thread) waits on the collector, it does not dump.
    me = next(t for t in process["threads"] if t["ident"] == threading.get_ident())
    assert not me["is_agent"]
    assert any(f["function"] == "collect" for f in me["frames"])


def test_only_dump_and_info_are_reachable(agent: Agent) -> None:
    import time

    conn = connect(agent.path, time.monotonic() + 5)
    try:
        root = conn.root
        assert json.loads(root.info())["pid"] == os.getpid()
        walks: list[Callable[[], object]] = [
            lambda: root._agent,
            lambda: root.exposed_dump.__func__,
            lambda: root.dump.__globals__,
            lambda: root.exposed_info.__self__,
            lambda: root.__dict__,
            lambda: root._connect,
        ]
        for walk in walks:
            with pytest.raises(AttributeError):
                walk()
        with pytest.raises(AttributeError):
            root.anything = 1
        # Anything but a JSON object as text is refused, not evaluated.
        bad = json.loads(root.dump([1, 2]))
        assert bad["status"] == "error" and "bad dump request" in bad["error"]
    finally:
        conn.close()


def test_a_classic_rpyc_client_gets_nothing(agent: Agent) -> None:
    # pystuck's way in: the classic (slave) protocol. Refused at the first step.
    with pytest.raises(AttributeError, match="cannot access 'getmodule'"):
        rpyc.classic.unix_connect(agent.path)
    # RPyC leaves the refused classic connection's socket open: collect it now,
    # not at a random later moment where its ResourceWarning fails some test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    conn = rpyc.utils.factory.unix_connect(agent.path, service=rpyc.SlaveService)
    try:
        for name in ("getmodule", "eval", "execute", "getconn", "modules"):
            with pytest.raises(AttributeError, match="cannot access"):
                getattr(conn.root, name)
    finally:
        conn.close()
    # The agent still answers afterwards.
    report = collect(os.path.dirname(os.path.dirname(agent.path)), INSTANCE)
    assert report["processes"][0]["status"] == "ok"


def test_another_uid_is_refused_even_with_open_modes(
    socket_dir: str, agent: Agent
) -> None:
    """Through RPyC's own client; tests/test_wire.py does it through the
    collector's."""
    open_modes(socket_dir, agent.path)
    out = as_another_uid(
        "import os,sys,time; from flask_utd.agent.rpc import connect\n"
        "import rpyc.core.protocol, rpyc.core.async_\n"
        "# as nobody\n"
        "c = connect(sys.argv[1], time.monotonic() + 5)\n"
        "try:\n    c.root.dump('{}'); print('ANSWERED')\n"
        "except EOFError: print('REFUSED')\n",
        agent.path,
    )
    assert "REFUSED" in out.stdout, out.stderr
    assert "ANSWERED" not in out.stdout


def test_socket_dir_of_another_user_or_open_is_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    os.chmod(open_dir, 0o777)
    with pytest.raises(SocketDirError, match="chmod 700"):
        ensure_private_dir(str(open_dir))
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(SocketDirError, match="symlink"):
        ensure_private_dir(str(link))
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(SocketDirError, match="belongs to uid 65534"):
            ensure_private_dir(str(theirs))
        with pytest.raises(SocketDirError):
            start_agent(str(theirs), INSTANCE, role="process", worker_id=None)
        assert not (theirs / INSTANCE).exists()


def test_stale_socket_is_reported_once_and_removed(
    socket_dir: str, agent: Agent
) -> None:
    dead = os.path.join(os.path.dirname(agent.path), "999999.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(dead)
    s.close()  # bound, never listening: what a killed process leaves
    report = collect(socket_dir, INSTANCE)
    by_pid = {p["pid"]: p for p in report["processes"]}
    assert by_pid[999999]["status"] == "stale"
    assert "removed" in (by_pid[999999]["error"] or "")
    assert not os.path.exists(dead)
    assert by_pid[os.getpid()]["status"] == "ok"
    assert [p["pid"] for p in collect(socket_dir, INSTANCE)["processes"]] == [
        os.getpid()
    ]
