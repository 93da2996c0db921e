"""The agent socket under abuse: garbage, bad frames, floods, slow clients.

Whatever a client sends, the agent drops that client and goes on answering the
others; it never holds more than :data:`~flask_utd.agent.server.MAX_CLIENTS` clients,
and no client keeps it past the deadlines.
"""

from __future__ import annotations

import json
import os
import socket
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from rpyc.core import brine
from rpyc.core import consts
from rpyc.core.channel import Channel

from flask_utd.agent import server as agent_module
from flask_utd.agent.lifecycle import Agent
from flask_utd.agent.lifecycle import start_agent
from flask_utd.agent.lifecycle import stop_agents
from flask_utd.agent.rpc import connect
from flask_utd.core.collector import collect
from tests.helpers import wait_for

INSTANCE = "4343"
HEADER = Channel.FRAME_HEADER
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture
def agent(socket_dir: str) -> Iterator[Agent]:
    a = start_agent(socket_dir, INSTANCE, role="process", worker_id=None)
    yield a
    stop_agents()


def frame(data: bytes, compressed: int = 0, length: int | None = None) -> bytes:
    """An RPyC frame as :class:`rpyc.core.channel.Channel` writes it."""
    size = len(data) if length is None else length
    return HEADER.pack(size, compressed) + data + Channel.FLUSHER


def request(handler: int, args: tuple[Any, ...], seq: int = 1) -> bytes:
    """The data of an RPyC request frame, with plain values as arguments."""
    boxed = (consts.LABEL_TUPLE, tuple((consts.LABEL_VALUE, a) for a in args))
    return raw_request(handler, boxed, seq)


def raw_request(handler: int, args: Any, seq: int = 1) -> bytes:
    """The data of an RPyC request frame, ``args`` as they go on the wire."""
    return brine.I1.pack(consts.MSG_REQUEST) + brine.dump((seq, (handler, args)))


def raw(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the agent sends until it closes; fails if it does not close."""
    sock.settimeout(timeout)
    got = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return got
            got += chunk
    except ConnectionResetError:
        return got
    except TimeoutError:
        raise AssertionError(
            f"the agent kept the connection past {timeout} s"
        ) from None


def dump_status(agent: Agent) -> str:
    conn = connect(agent.path, time.monotonic() + 5)
    try:
        report = json.loads(conn.root.dump("{}"))
    finally:
        conn.close()
    assert report["pid"] == os.getpid()
    return str(report["status"])


def answers_info(agent: Agent) -> bool:
    conn = connect(agent.path, time.monotonic() + 5)
    try:
        return bool(json.loads(conn.root.info())["pid"] == os.getpid())
    finally:
        conn.close()


def clients(agent: Agent) -> int:
    return len(agent.server._clients)


# -- property-based ---------------------------------------------------------

brine_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.binary(max_size=50),
    lambda inner: st.lists(inner, max_size=4).map(tuple),
    max_leaves=12,
)


@st.composite
def rpyc_frames(draw: st.DrawFn) -> bytes:
    """Frames close to what RPyC sends, then damaged in one way or another."""
    kind = draw(st.sampled_from(["request", "request", "message", "junk"]))
    if kind == "request":
        handler = draw(st.integers(0, 40))
        seq = draw(st.integers(0, 2**31))
        if draw(st.booleans()):
            args = draw(st.lists(brine_values, max_size=3).map(tuple))
            data = request(handler, args, seq)
        else:
            data = raw_request(handler, draw(brine_values), seq)
    elif kind == "message":
        data = brine.I1.pack(draw(st.integers(0, 255))) + brine.dump(draw(brine_values))
    else:
        data = draw(st.binary(max_size=300))
    compressed = draw(st.sampled_from([0, 0, 1, 255]))
    if compressed and draw(st.booleans()):
        data = zlib.compress(data)
    wire = frame(data, compressed, length=draw(st.none() | st.integers(0, 2**32 - 1)))
    cut = draw(st.none() | st.integers(0, len(wire)))
    return wire if cut is None else wire[:cut]


@FUZZ
@given(data=st.binary(max_size=2048), keep_open=st.booleans())
def test_random_bytes(
    agent: Agent, data: bytes, keep_open: bool, held: list[socket.socket]
) -> None:
    sock = raw(agent.path)
    try:
        sock.sendall(data)
    except OSError:
        pass  # the agent may already have cut it off
    if keep_open and len(held) < 30:
        held.append(sock)  # garbage that stays: the agent must make room
    else:
        sock.close()
    assert answers_info(agent)
    assert clients(agent) <= agent_module.MAX_CLIENTS


@FUZZ
@given(frames=st.lists(rpyc_frames(), min_size=1, max_size=4), keep_open=st.booleans())
def test_damaged_rpyc_frames(
    agent: Agent, frames: list[bytes], keep_open: bool, held: list[socket.socket]
) -> None:
    sock = raw(agent.path)
    try:
        sock.sendall(b"".join(frames))
    except OSError:
        pass
    if keep_open and len(held) < 30:
        held.append(sock)
    else:
        sock.close()
    assert answers_info(agent)
    assert clients(agent) <= agent_module.MAX_CLIENTS


@pytest.fixture
def held(agent: Agent) -> Iterator[list[socket.socket]]:
    """Connections a test keeps open; at the end the agent must still dump."""
    socks: list[socket.socket] = []
    yield socks
    assert dump_status(agent) == "ok"
    for sock in socks:
        sock.close()
    assert dump_status(agent) == "ok"


# -- regressions --------------------------------------------------------------


@pytest.fixture
def long_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deadlines far away, so that a test sees a client cut for another reason."""
    monkeypatch.setattr(agent_module, "REQUEST_DEADLINE", 60.0)
    monkeypatch.setattr(agent_module, "CONNECTION_DEADLINE", 120.0)


def test_idle_flood_does_not_starve_the_agent(
    agent: Agent, held: list[socket.socket]
) -> None:
    # Before: one idle connection held the agent for 5 s, so a flood starved it.
    for _ in range(200):
        held.append(raw(agent.path))
    # All from one process: that process gets its share, no more.
    wait_for(lambda: clients(agent) == agent_module.MAX_CLIENTS_PER_PEER, timeout=10)
    report = collect(
        os.path.dirname(os.path.dirname(agent.path)), INSTANCE, timeout=2.0
    )
    assert [p["status"] for p in report["processes"]] == ["ok"]
    assert clients(agent) <= agent_module.MAX_CLIENTS


@pytest.mark.usefixtures("long_deadlines")
@pytest.mark.parametrize("limit", ["MAX_CLIENTS", "MAX_CLIENTS_PER_PEER"])
def test_idle_clients_make_room_oldest_first(
    agent: Agent, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    monkeypatch.setattr(agent_module, "MAX_CLIENTS", 3)
    monkeypatch.setattr(agent_module, "MAX_CLIENTS_PER_PEER", 3)
    monkeypatch.setattr(agent_module, limit, 100)
    idle = [raw(agent.path) for _ in range(3)]
    wait_for(lambda: clients(agent) == 3, timeout=10)
    try:
        assert dump_status(agent) == "ok"
        assert read_until_closed(idle[0], timeout=10) == b""
        idle[-1].settimeout(0.2)
        with pytest.raises(socket.timeout):
            idle[-1].recv(1)  # the newest idle client is still held
    finally:
        for sock in idle:
            sock.close()


def stuffed(agent: Agent) -> socket.socket:
    """A client that asks without reading, until the agent holds an answer."""
    sock = raw(agent.path)
    sock.settimeout(3)
    with pytest.raises(socket.timeout):
        # The agent stops reading while an answer waits to be sent, so this
        # fills the socket's buffers and blocks instead of the agent's memory.
        sock.sendall(frame(request(consts.HANDLE_GETROOT, ())) * 50_000)
    return sock


@pytest.mark.usefixtures("long_deadlines")
def test_busy_agent_closes_newcomers_quiet_clients_make_room(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "MAX_CLIENTS", 2)
    monkeypatch.setattr(agent_module, "MAX_CLIENTS_PER_PEER", 2)
    quiet = connect(agent.path, time.monotonic() + 60)
    busy = stuffed(agent)
    try:
        assert json.loads(quiet.root.info())["pid"] == os.getpid()
        # A served client that is quiet makes room...
        assert dump_status(agent) == "ok"
        with pytest.raises(EOFError):
            quiet.root.info()
        # ...one that waits for its answers to be taken does not.
        other = stuffed(agent)
        late = raw(agent.path)
        assert read_until_closed(late, timeout=10) == b""
        late.close()
        other.close()
    finally:
        quiet.close()
        busy.close()
    wait_for(lambda: clients(agent) == 0, timeout=10)
    assert dump_status(agent) == "ok"


@pytest.mark.usefixtures("long_deadlines")
@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(HEADER.pack(2**32 - 1, 0), id="length-4GiB"),
        pytest.param(HEADER.pack(agent_module.MAX_FRAME + 1, 0), id="length-max+1"),
        pytest.param(
            frame(zlib.compress(b"\0" * (agent_module.MAX_FRAME * 40)), 1),
            id="decompression-bomb",
        ),
        pytest.param(frame(b"not zlib", 1), id="bad-zlib"),
        pytest.param(frame(b""), id="empty"),
        pytest.param(frame(b"\x07garbage"), id="bad-brine"),
        pytest.param(frame(request(consts.HANDLE_CLOSE, ())), id="close-request"),
    ],
)
def test_bad_frames_are_cut_at_once(agent: Agent, wire: bytes) -> None:
    sock = raw(agent.path)
    try:
        sock.sendall(wire)
        # Cut for what it sent, not at a deadline (those are a minute away).
        read_until_closed(sock, timeout=10)
    finally:
        sock.close()
    assert dump_status(agent) == "ok"


def test_truncated_frame_is_cut_at_the_request_deadline(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "REQUEST_DEADLINE", 0.5)
    wire = frame(request(consts.HANDLE_GETROOT, ()))
    sock = raw(agent.path)
    try:
        sock.sendall(wire[: len(wire) // 2])
        started = time.monotonic()
        # Others are served while this one waits for the rest of its frame.
        assert dump_status(agent) == "ok"
        read_until_closed(sock, timeout=10)
        assert time.monotonic() - started >= 0.3  # the deadline, not the frame
    finally:
        sock.close()


def test_chatty_client_is_cut_at_the_connection_deadline(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "REQUEST_DEADLINE", 0.5)
    monkeypatch.setattr(agent_module, "CONNECTION_DEADLINE", 1.5)
    ping = frame(request(consts.HANDLE_PING, (b"x",)))
    sock = raw(agent.path)
    started = time.monotonic()
    answers = 0
    try:
        with pytest.raises((BrokenPipeError, ConnectionResetError, EOFError)):
            while time.monotonic() - started < 30:
                sock.sendall(ping)
                sock.settimeout(10)
                if not sock.recv(65536):
                    raise EOFError
                answers += 1
                time.sleep(0.05)
    finally:
        sock.close()
    assert answers >= 2
    assert time.monotonic() - started < 30
    assert dump_status(agent) == "ok"


@pytest.mark.usefixtures("long_deadlines")
def test_client_that_never_reads_is_not_read_either(agent: Agent) -> None:
    sock = stuffed(agent)
    try:
        (client,) = list(agent.server._clients)
        assert len(client.inbox) <= agent_module.MAX_FRAME + 64 * 1024
        assert 0 < len(client.channel.stream.data) < 4096
    finally:
        sock.close()
    assert dump_status(agent) == "ok"
