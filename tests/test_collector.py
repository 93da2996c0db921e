"""The collector's statuses and deadlines, against sockets that misbehave."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator

import pytest

from flask_utd.agent.lifecycle import leave_unsafe_note
from flask_utd.agent.lifecycle import start_agent
from flask_utd.agent.lifecycle import stop_agents
from flask_utd.core.collector import MARGIN
from flask_utd.core.collector import collect
from flask_utd.core.collector import find_instance
from flask_utd.core.errors import InstanceNotFound
from flask_utd.core.sockets import ensure_private_dir

INSTANCE = str(os.getpid())


@pytest.fixture
def silent(socket_dir: str) -> Iterator[list[socket.socket]]:
    """Three sockets that accept connections and never answer, next to this
    process's agent (started first: an agent sweeps away the sockets of PIDs
    that do not exist, such as these made-up ones)."""
    start_agent(socket_dir, INSTANCE, role="process", worker_id=None)
    made = []
    for pid in (900001, 900002, 900003):
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.path.join(socket_dir, INSTANCE, f"{pid}.sock"))
        s.listen(5)
        made.append(s)
    yield made
    for s in made:
        s.close()


def test_silent_processes_time_out_within_the_deadline(
    socket_dir: str, silent: list[socket.socket]
) -> None:
    try:
        started = time.monotonic()
        report = collect(socket_dir, INSTANCE, timeout=0.5)
        elapsed = time.monotonic() - started
    finally:
        stop_agents()
    statuses = {p["pid"]: p["status"] for p in report["processes"]}
    assert statuses == {
        os.getpid(): "ok",
        900001: "timeout",
        900002: "timeout",
        900003: "timeout",
    }
    message = report["processes"][-1]["error"] or ""
    assert "GIL" in message and "UTD_TIMEOUT" in message
    # Asked in parallel: one deadline, not three. The bound is the contract, with
    # slack for a loaded machine.
    assert elapsed < 0.5 + MARGIN + 1.0


def test_unsafe_note_and_roster_worker_without_socket(socket_dir: str) -> None:
    leave_unsafe_note(
        socket_dir, INSTANCE, role="master", worker_id=None, message="add X"
    )
    report = collect(socket_dir, INSTANCE, roster=[{"pid": 1, "worker_id": 7}])
    by_pid = {p["pid"]: p for p in report["processes"]}
    assert by_pid[os.getpid()]["status"] == "unsafe"
    assert by_pid[os.getpid()]["role"] == "master"
    assert by_pid[os.getpid()]["error"] == "add X"
    assert by_pid[1]["status"] == "error" and by_pid[1]["worker_id"] == 7
    assert "no agent socket" in (by_pid[1]["error"] or "")
    assert report["schema"] == "flask-utd/1"
    json.dumps(report)


def test_two_instances_never_mix(socket_dir: str) -> None:
    start_agent(socket_dir, INSTANCE, role="process", worker_id=None)
    try:
        other = os.path.join(socket_dir, "1")  # pid 1 exists: a live instance
        ensure_private_dir(other)
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.path.join(other, "1.sock"))
        s.listen(1)
        try:
            mine = collect(socket_dir, INSTANCE)
            assert [p["pid"] for p in mine["processes"]] == [os.getpid()]
            with pytest.raises(InstanceNotFound, match="--instance"):
                find_instance([socket_dir])
            assert find_instance([socket_dir], INSTANCE) == (socket_dir, INSTANCE)
        finally:
            s.close()
    finally:
        stop_agents()


def test_no_instance_says_where_it_looked(socket_dir: str) -> None:
    with pytest.raises(InstanceNotFound, match="UTD_SOCKET_DIR") as info:
        find_instance([socket_dir])
    assert socket_dir in str(info.value)


def test_instances_of_dead_masters_are_cleaned_up(socket_dir: str) -> None:
    dead = os.path.join(socket_dir, "999998")  # no such pid
    ensure_private_dir(dead)
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(dead, "999998.sock"))
    s.close()  # bound, never listening: left by a SIGKILLed master
    with open(os.path.join(dead, "999997.unsafe"), "w") as f:
        f.write("{}")
    with pytest.raises(InstanceNotFound):
        find_instance([socket_dir])
    assert not os.path.exists(dead)


def test_children_of_the_master_without_an_agent_are_listed(socket_dir: str) -> None:
    """A worker being forked or exiting has no socket: the report says so."""
    import subprocess
    import sys

    ensure_private_dir(os.path.join(socket_dir, INSTANCE))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        report = collect(socket_dir, INSTANCE)
        assert {"pid": child.pid} in report["unlisted"]
        assert child.pid not in [p["pid"] for p in report["processes"]]
        from flask_utd.core.render import render_text

        assert (
            f"Not in this dump: pid {child.pid}"
            in render_text(report).replace(", ", " ")
            or str(child.pid) in render_text(report).split("Not in this dump")[1]
        )
    finally:
        child.kill()
        child.wait()
    assert collect(socket_dir, INSTANCE)["unlisted"] == []
