"""The collector's minimal RPyC client against the agent's real RPyC server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rpyc.core import brine
from rpyc.core import consts

from demo_app.server import ROOT
from flask_utd.agent.lifecycle import Agent
from flask_utd.agent.lifecycle import start_agent
from flask_utd.agent.lifecycle import stop_agents
from flask_utd.agent.rpc import connect
from flask_utd.core import wire
from flask_utd.core.formats import FORMATS
from tests.helpers import as_another_uid
from tests.helpers import lean_dump
from tests.helpers import open_modes

INSTANCE = "4343"

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.text(max_size=300)
    | st.binary(max_size=300),
    lambda children: st.lists(children, max_size=6).map(tuple),
    max_leaves=40,
)


@given(plain)
def test_brine_subset_matches_rpyc(value: Any) -> None:
    data = wire.dumps(value)
    assert data == brine.dump(value)
    assert wire.loads(data) == value == brine.load(data)


def test_constants_are_rpycs() -> None:
    names = [n for n in vars(wire) if n.startswith(("MSG_", "LABEL_", "HANDLE_"))]
    assert len(names) == 9
    for name in names:
        assert getattr(wire, name) == getattr(consts, name), name
    tags = [n for n in vars(wire) if n.startswith("TAG_")]
    assert len(tags) == 15
    for name in tags:
        assert bytes((getattr(wire, name),)) == getattr(brine, name), name
    assert bytes((wire.TAG_STR1 + 3,)) == brine.TAG_STR4
    assert bytes((wire.TAG_TUP1 + 3,)) == brine.TAG_TUP4
    small = range(wire.IMM_INT_MIN, wire.IMM_INT_MAX)
    assert {n: bytes((n + wire.IMM_INT_BIAS,)) for n in small} == brine.IMM_INTS
    for ours, theirs in ((wire._I1, brine.I1), (wire._I4, brine.I4)):
        assert ours.format == theirs.format
    assert wire._F8.format == brine.F8.format


def test_brine_rejects_what_it_does_not_speak() -> None:
    with pytest.raises(TypeError):
        wire.dumps([1, 2])
    with pytest.raises(wire.ProtocolError):
        wire.loads(brine.dump(frozenset({1})))
    with pytest.raises(wire.ProtocolError):
        wire.loads(brine.dump("abc")[:-1])


@pytest.fixture
def agent(socket_dir: str) -> Iterator[Agent]:
    a = start_agent(socket_dir, INSTANCE, role="process", worker_id=None)
    yield a
    stop_agents()


def test_dump_from_the_real_agent_compressed_frames_included(agent: Agent) -> None:
    release = threading.Event()
    parked = [threading.Thread(target=release.wait, daemon=True) for _ in range(20)]
    for thread in parked:
        thread.start()
    try:
        text = wire.call(agent.path, time.monotonic() + 5, "dump", "{}")
    finally:
        release.set()
    # Over 3000 bytes, RPyC compresses the frame: this reply took that path.
    assert isinstance(text, str) and len(text) > 3000
    report = json.loads(text)
    assert report["pid"] == os.getpid() and report["status"] == "ok"
    idents = {t["ident"] for t in report["threads"]}
    assert {t.ident for t in parked} <= idents
    info = json.loads(wire.call(agent.path, time.monotonic() + 5, "info"))
    assert info == {"pid": os.getpid(), "role": "process", "worker_id": None}


def test_the_agent_outlives_clients_that_hang_up(agent: Agent) -> None:
    for _ in range(20):
        wire.call(agent.path, time.monotonic() + 5, "dump", "{}")
        with socket.socket(socket.AF_UNIX) as rude:  # connects, says nothing, leaves
            rude.connect(agent.path)
    assert agent.thread.is_alive()
    assert json.loads(wire.call(agent.path, time.monotonic() + 5, "dump", "{}"))["pid"]


def test_the_agent_still_refuses_everything_else(agent: Agent) -> None:
    for name in (
        "_agent",
        "__class__",
        "__init__",
        "exposed_dump.__globals__",
        "on_connect",
    ):
        with pytest.raises(wire.RemoteError, match="AttributeError"):
            wire.call(agent.path, time.monotonic() + 5, name)


def _ask_raw(path: str, data: bytes) -> bytes:
    """Send ``data`` to the agent on ``path``; everything it sends until it
    closes the connection."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_info_and_stats_skip_rpyc_and_answer_what_rpyc_does(agent: Agent) -> None:
    """``info`` and ``stats`` (the watchdog's probe, a Prometheus scrape) come as
    one plain frame: the agent answers with one frame of its service's JSON,
    then closes, in one round trip and with no RPyC connection."""
    conn = connect(agent.path, time.monotonic() + 5)
    try:
        through_rpyc = {
            name: json.loads(getattr(conn.root, name)()) for name in ("info", "stats")
        }
    finally:
        conn.close()
    for name, question in wire.PLAIN_QUESTIONS.items():
        answer = _ask_raw(agent.path, wire.frame(question))
        # Exactly one uncompressed frame, then the agent closed the connection.
        length, compressed = wire.FRAME_HEADER.unpack_from(answer)
        assert compressed == 0
        assert len(answer) == wire.FRAME_HEADER.size + length + len(wire.FLUSHER)
        plain = json.loads(answer[wire.FRAME_HEADER.size : -len(wire.FLUSHER)])
        assert (
            plain
            == through_rpyc[name]
            == json.loads(wire.call(agent.path, time.monotonic() + 5, name))
        )
        # RPyC's first byte is a message type: a plain question is never RPyC.
        assert question[0] not in (wire.MSG_REQUEST, wire.MSG_REPLY, wire.MSG_EXCEPTION)


def test_a_plain_frame_asks_nothing_else(agent: Agent) -> None:
    """Only the two questions: any other plain frame (a dump, a question after
    an RPyC request) is not RPyC and ends the connection unanswered."""
    for data in (
        wire.frame(b"flask-utd:dump"),
        wire.frame(b"flask-utd:stats "),
        wire._GETROOT + wire.frame(wire.PLAIN_QUESTIONS["stats"]),
    ):
        answer = _ask_raw(agent.path, data)
        if data.startswith(wire._GETROOT):
            # The root's reference, then nothing for the plain frame.
            assert wire._answer(answer[wire.FRAME_HEADER.size : -len(wire.FLUSHER)], 1)
        else:
            assert answer == b""
    assert (
        json.loads(wire.call(agent.path, time.monotonic() + 5, "info"))["pid"]
        == os.getpid()
    )


def test_stale_socket_is_refused(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "gone.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.close()
    with pytest.raises(ConnectionRefusedError):
        wire.call(path, time.monotonic() + 5, "dump", "{}")


def _serve_once(path: str, answer: bytes | None) -> threading.Thread:
    """A peer that reads one request and sends ``answer`` (or nothing, then closes)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            conn.recv(65536)
            if answer is not None:
                conn.sendall(answer)
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_silent_peer_ends_at_the_deadline(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "silent.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)  # never accepts: connect succeeds, nothing answers
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            wire.call(path, started + 0.3, "dump", "{}")
        assert time.monotonic() - started < 2
    finally:
        listener.close()


def test_a_peer_that_hangs_up_is_eof(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "hangup.sock")
    thread = _serve_once(path, None)
    with pytest.raises(EOFError):
        wire.call(path, time.monotonic() + 5, "dump", "{}")
    thread.join(5)


def _frame(message: int, body: Any) -> bytes:
    payload = bytes((message,)) + brine.dump(body)
    return wire.FRAME_HEADER.pack(len(payload), 0) + payload + wire.FLUSHER


def test_a_reference_for_the_root_is_required_and_values_only_come_back(
    socket_dir: str,
) -> None:
    # A root that is a plain value: not an RPyC service.
    path = os.path.join(socket_dir, "odd.sock")
    thread = _serve_once(path, _frame(wire.MSG_REPLY, (1, (wire.LABEL_VALUE, "root"))))
    with pytest.raises(wire.ProtocolError):
        wire.call(path, time.monotonic() + 5, "dump", "{}")
    thread.join(5)


def test_a_request_from_the_peer_is_refused(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "calls-back.sock")
    thread = _serve_once(
        path, _frame(wire.MSG_REQUEST, (1, (3, (wire.LABEL_VALUE, ()))))
    )
    with pytest.raises(wire.ProtocolError):
        wire.call(path, time.monotonic() + 5, "dump", "{}")
    thread.join(5)


def test_call_all_ends_every_call_with_its_own_outcome(
    agent: Agent, socket_dir: str
) -> None:
    stale = os.path.join(socket_dir, "stale.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(stale)
    listener.close()
    silent = os.path.join(socket_dir, "silent.sock")
    quiet = socket.socket(socket.AF_UNIX)
    quiet.bind(silent)
    quiet.listen(1)  # never accepts
    hangup = os.path.join(socket_dir, "hangup.sock")
    thread = _serve_once(hangup, None)
    calls = [
        wire.Call(path, "dump", "{}")
        for path in (
            agent.path,
            stale,
            os.path.join(socket_dir, "missing.sock"),
            silent,
            hangup,
            agent.path,
        )
    ]
    try:
        started = time.monotonic()
        wire.call_all(calls, started + 0.5)
        assert time.monotonic() - started < 2
    finally:
        quiet.close()
        thread.join(5)
    good, refused, missing, timed_out, closed, again = calls
    for call in (good, again):
        assert call.error is None and json.loads(call.value)["pid"] == os.getpid()
    assert isinstance(refused.error, ConnectionRefusedError) and not refused.connected
    assert isinstance(missing.error, FileNotFoundError) and not missing.connected
    assert isinstance(timed_out.error, TimeoutError) and timed_out.connected
    assert isinstance(closed.error, EOFError) and closed.connected
    assert all(call.done for call in calls)


@pytest.mark.parametrize(
    ("args", "shows", "imported"),
    [
        ([], "process (pid {pid}): ok", []),
        (["--json"], '"pid": {pid},', []),
        (["--format", "html"], "<!doctype html>", ["jinja2"]),
    ],
)
def test_lean_dump_imports_no_rpyc_click_or_flask(
    socket_dir: str, args: list[str], shows: str, imported: list[str]
) -> None:
    """The lean command's start-up is most of its time (docs/performance.md):
    each of these costs it from 5 to 200 ms. Jinja only for an HTML page."""
    # The instance is named after a live process (this one), as a master's pid.
    start_agent(socket_dir, str(os.getpid()), role="process", worker_id=None)
    code = (
        "import sys, runpy\n"
        "sys.argv = ['flask_utd', 'dump', '--socket-dir', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('flask_utd', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    heavy = [m for m in ('flask', 'click', 'rpyc', 'jinja2',"
        " 'concurrent.futures', 'importlib.metadata', 'datetime')"
        " if m in sys.modules]\n"
        "    print('EXIT', e.code, heavy, flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, socket_dir, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    stop_agents()
    assert f"EXIT 0 {imported}" in out.stdout, out.stdout + out.stderr
    assert shows.format(pid=os.getpid()) in out.stdout


def test_another_uid_is_refused_through_the_wire_client(
    socket_dir: str, agent: Agent
) -> None:
    open_modes(socket_dir, agent.path)
    out = as_another_uid(
        "import os, sys, time\n"
        "from flask_utd.core.collector import ask\n"
        "# as nobody\n"
        "answer = ask(sys.argv[1], 1, time.monotonic() + 5, 5.0, '{}')\n"
        "print(answer['status'], answer['error'])\n",
        agent.path,
    )
    assert out.stdout.startswith("refused "), out.stdout + out.stderr
    assert "run the command as the server's user" in out.stdout


def test_lean_options_are_checked(socket_dir: str) -> None:
    """Usage errors are argparse's: exit code 2, the usage, and one line that
    says what is wrong."""
    for args, message in (
        (["--slow-after", "soon"], "argument --slow-after: 'soon' is not a number"),
        (["--timeout", "0"], "argument --timeout: '0' is not a number more than 0"),
        (["--pid", "one"], "argument --pid: invalid int value: 'one'"),
        (["--format", "xml"], "argument --format: invalid choice: 'xml'"),
        (["--json", "--format", "text"], "not allowed with argument --json"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ):
        out = lean_dump(socket_dir, *args)
        assert out.returncode == 2 and out.stdout == "", out
        assert out.stderr.startswith("usage: python -m flask_utd")
        (error,) = [line for line in out.stderr.splitlines() if "error:" in line]
        assert message in error, out.stderr
        if "--format" in message:
            assert all(name in error for name in ("json", "text", "html"))


def test_lean_help_and_no_command() -> None:
    run = [sys.executable, "-m", "flask_utd"]
    kwargs: dict[str, Any] = {"capture_output": True, "text": True, "cwd": ROOT}
    helped = subprocess.run([*run, "dump", "--help"], timeout=60, **kwargs)
    assert helped.returncode == 0 and helped.stderr == ""
    for option in (
        "--socket-dir",
        f"--format {{{','.join(FORMATS)}}}",
        "--json",
        "--pid",
    ):
        assert option in helped.stdout
    assert "(default: 2)" in helped.stdout and "(default: 5)" in helped.stdout
    bare = subprocess.run(run, timeout=60, **kwargs)
    assert bare.returncode == 2
    assert "the following arguments are required: COMMAND" in bare.stderr
