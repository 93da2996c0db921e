"""A flood on the agents of a real uWSGI server: requests go on, dumps answer."""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo_app.server import ROOT
from demo_app.server import ini_without_address
from flask_utd.core import sockets
from tests.helpers import Servers
from tests.helpers import need_uwsgi
from tests.helpers import report_of
from tests.helpers import wait_for

pytestmark = pytest.mark.uwsgi

#: New connections a second that the flood makes, over the three agents. A
#: process of the same user that connects faster than an agent can accept fills
#: that socket's listen queue; see the security model in the docs.
FLOOD_RATE = float(os.environ.get("UTD_TEST_FLOOD_RATE", "3000"))

#: A separate process that floods every agent socket it is given: idle
#: connections (up to 300 held), garbage, and oversized frame headers, at most
#: ``rate`` new connections a second in all (0: as fast as it can).
FLOOD = r"""
import os, socket, sys, time
rate, paths = float(sys.argv[1]), sys.argv[2:]
held, n, start = [], 0, time.monotonic()
end = start + 60
while time.monotonic() < end:
    if rate and n > rate * (time.monotonic() - start):
        time.sleep(0.001)
        continue
    for path in paths:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1)
        try:
            s.connect(path)
            kind = n % 3
            if kind == 1:
                s.send(os.urandom(64))
            elif kind == 2:
                s.send(b"\xff\xff\xff\xff\x00")
        except OSError:
            s.close()
            continue
        n += 1
        held.append(s)
        if len(held) > 300:
            held.pop(0).close()
    if n % 1000 < len(paths):
        print(n, round(n / (time.monotonic() - start)), flush=True)
"""


def request_times(port: int, count: int) -> list[float]:
    """Seconds each of ``count`` sequential ``GET /`` took; each must succeed."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.status == 200
            response.read()
        finally:
            conn.close()
        times.append(time.perf_counter() - started)
    return times


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return (
        f"median {statistics.median(times) * 1000:.2f} ms,"
        f" p99 {p99 * 1000:.2f} ms, max {ordered[-1] * 1000:.2f} ms"
    )


def test_flood_of_agent_connections_under_uwsgi(
    servers: Servers, tmp_path: Path, socket_dir: str
) -> None:
    binary = need_uwsgi()
    options = ini_without_address(tmp_path / "uwsgi.ini")
    server = servers.start(binary, options, env={"DEMO_HELLO_SECONDS": "1"})
    assert server.port is not None
    instance = sockets.instance_dir(socket_dir, str(server.pid))
    # Every process's agent runs: the master's and both workers'.
    wait_for(
        lambda: (
            len(sockets.list_entries(instance)) == 3
            and all(e.kind == "socket" for e in sockets.list_entries(instance))
        ),
        timeout=30,
    )
    request_times(server.port, 20)  # warm up
    baseline = request_times(server.port, 200)

    paths = [e.path for e in sockets.list_entries(instance)]
    flood = subprocess.Popen(
        [sys.executable, "-c", FLOOD, str(FLOOD_RATE), *paths],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
    )
    try:
        assert flood.stdout is not None
        # The flood is under way: it has made its first thousand connections.
        first = flood.stdout.readline().split()
        assert first and first[0].isdigit(), first
        during = request_times(server.port, 200)
        dumps = [report_of(server, socket_dir, timeout=2.0) for _ in range(5)]
        assert flood.poll() is None, "the flood process ended early"
    finally:
        flood.kill()
        flood.wait(10)
        if flood.stdout is not None:
            flood.stdout.close()
    for report in dumps:
        statuses = {p["pid"]: p["status"] for p in report["processes"]}
        assert sorted(statuses.values()) == ["ok", "ok", "ok"], [
            (p["status"], p["error"]) for p in report["processes"]
        ]
    print(
        f"\nflood: {FLOOD_RATE:g} connections/s asked, {first[1]} made"
        f"\nGET / without flood: {summary(baseline)}"
        f"\nGET / during flood:  {summary(during)}"
    )
    # The servers are alive and serve: no agent fell over.
    assert server.proc is not None and server.proc.poll() is None
    assert os.path.exists(paths[0])
