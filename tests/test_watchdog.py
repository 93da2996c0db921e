"""The watchdog in this process: one record per stuck request and one at its
end, what a record holds in both forms, where it goes without any logging
configuration, and what it costs (no wake-up while idle)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from demo_app.server import ROOT
from flask_utd import utd_bp
from flask_utd.agent import tracking
from flask_utd.agent import watchdog
from flask_utd.agent.tracking import RequestTracker
from flask_utd.agent.tracking import trace_of
from flask_utd.core import wire
from tests.helpers import context_switches
from tests.helpers import wait_for

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
THRESHOLD = 0.4


@pytest.fixture
def watched_app(socket_dir: str) -> Iterator[Flask]:
    app = Flask("watched")
    app.config.update(SECRET_KEY="s", UTD_SOCKET_DIR=socket_dir, UTD_WATCHDOG=THRESHOLD)
    app.register_blueprint(utd_bp)

    @app.get("/sleep/<float:seconds>")
    def sleep(seconds: float) -> str:
        time.sleep(seconds)
        return "slept"

    def descend(depth: int) -> None:
        if depth:
            time.sleep(0.02)
            descend(depth - 1)

    @app.get("/busy")
    def busy() -> str:
        descend(60)
        return "busy"

    yield app


def _in_thread(app: Flask, path: str, **headers: str) -> threading.Thread:
    client = app.test_client()
    thread = threading.Thread(
        target=client.get, args=(path,), kwargs={"headers": headers}, daemon=True
    )
    thread.start()
    return thread


def _watchdog_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "flask_utd.watchdog"]


def test_a_stuck_request_is_reported_once_then_its_end(
    watched_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flask_utd.watchdog")
    watched_app.test_client().get("/sleep/0.0")  # starts the agent and the watchdog
    stuck = _in_thread(
        watched_app, "/sleep/1.5", traceparent=TRACEPARENT, **{"X-Request-ID": "r-1"}
    )
    quick = _in_thread(watched_app, "/sleep/0.1")
    stuck.join(10)
    quick.join(10)
    wait_for(lambda: len(_watchdog_records(caplog)) >= 2)
    records = _watchdog_records(caplog)
    # Exactly one record of the stuck request, although it stayed stuck over
    # several looks; none of the quick one; one more at its end.
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO], [
        r.getMessage().splitlines()[0] for r in records
    ]
    warning, ended = (r.flask_utd for r in records)  # type: ignore[attr-defined]
    assert warning["event.name"] == "flask_utd.watchdog.stuck"
    assert warning["http.request.method"] == "GET"
    assert warning["url.path"] == "/sleep/1.5"
    assert warning["flask_utd.endpoint"] == "sleep"
    assert warning["flask_utd.request_id"] == "r-1"
    assert warning["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert warning["span_id"] == "00f067aa0ba902b7"
    assert warning["process.pid"] == os.getpid()
    assert warning["flask_utd.role"] == "process"
    assert warning["thread.id"] == stuck.ident
    assert warning["thread.name"] == stuck.name
    assert warning["flask_utd.native_id"] == stuck.native_id
    # Where it comes from, with the names of a dump's JSON Lines.
    assert warning["host.name"] == socket.gethostname()
    assert warning["flask_utd.instance"] == str(os.getpid())
    # Seen at the first look past the threshold, at most half a threshold later.
    assert THRESHOLD <= warning["flask_utd.elapsed_s"] < 1.5 * THRESHOLD + 0.3
    assert warning["flask_utd.wait"] == "sleeping"
    assert warning["flask_utd.moved"] is False
    # Sampled at each look once 0.4 threshold old: two looks, or three when the
    # looks fall just after 0.4, 0.9 and 1.4 thresholds.
    assert warning["flask_utd.samples"] in (2, 3)
    assert warning["flask_utd.same_line_s"] >= THRESHOLD / 2 - 0.05
    # The innermost frame is the app's here: no flask_utd.app.* apart.
    assert warning["code.function"] == "sleep"
    assert warning["code.lineno"] > 0 and warning["code.filepath"] == __file__
    assert "flask_utd.app.function" not in warning
    assert warning["code.stacktrace"].splitlines()[-1].strip() == "time.sleep(seconds)"
    assert warning["flask_utd.source"] == "agent"
    assert ended["event.name"] == "flask_utd.watchdog.ended"
    assert 1.5 <= ended["flask_utd.elapsed_s"] < 1.8
    assert ended["trace_id"] == warning["trace_id"]
    assert ended["flask_utd.reported_at_s"] == warning["flask_utd.elapsed_s"]
    # The readable block: the request, then the stack innermost first.
    text = records[0].getMessage()
    assert text.startswith("flask-utd watchdog: request stuck for ")
    assert "GET /sleep/1.5 (sleep)" in text and "sleeping" in text
    assert "request id r-1, trace id 4bf92f3577b34da6a3ce929d0e0e4736" in text
    stack = text.split("stack, innermost first:\n")[1].splitlines()
    assert "in sleep" in stack[0] and stack[1].strip() == "time.sleep(seconds)"
    assert "; at sleep (" in text.splitlines()[0]


def test_a_busy_request_moved(
    watched_app: Flask, caplog: pytest.LogCaptureFixture, socket_dir: str
) -> None:
    caplog.set_level(logging.INFO, logger="flask_utd.watchdog")
    watched_app.test_client().get("/sleep/0.0")
    _in_thread(watched_app, "/busy").join(10)
    wait_for(lambda: len(_watchdog_records(caplog)) == 2)
    warning, _ended = _watchdog_records(caplog)
    assert warning.flask_utd["url.path"] == "/busy"  # type: ignore[attr-defined]
    assert warning.flask_utd["flask_utd.moved"] is True  # type: ignore[attr-defined]
    # The agent's stats count the record, for GET /_utd/metrics.
    path = os.path.join(socket_dir, str(os.getpid()), f"{os.getpid()}.sock")
    stats = json.loads(wire.call(path, time.monotonic() + 5, "stats"))
    assert stats["watchdog_records"] == 1


SCRIPT = """
import sys, threading, time
from flask import Flask
from flask_utd import utd_bp
from flask_utd.agent.lifecycle import stop_agents

app = Flask("plain")
app.config.update(
    SECRET_KEY="s", UTD_SOCKET_DIR=sys.argv[1], UTD_WATCHDOG=0.3,
    UTD_WATCHDOG_FORMAT=sys.argv[2],
)
app.register_blueprint(utd_bp)

@app.get("/sleep/<float:seconds>")
def sleep(seconds):
    time.sleep(seconds)
    return "slept"

client = app.test_client()
threads = [
    threading.Thread(target=client.get, args=(path,), kwargs={"headers": headers})
    for path, headers in [
        ("/sleep/1.0", {"traceparent": sys.argv[3]}),
        ("/sleep/0.1", {}),
    ]
]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
time.sleep(0.5)
stop_agents()
"""


def _run_plain(socket_dir: str, fmt: str) -> str:
    """A process with no logging configuration at all: what its stderr shows."""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, socket_dir, fmt, TRACEPARENT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    return out.stderr


def test_without_logging_configuration_records_go_to_stderr(socket_dir: str) -> None:
    text = _run_plain(socket_dir, "text")
    assert text.count("flask-utd watchdog: request stuck for") == 1, text
    assert "WARNING in flask_utd.watchdog: flask-utd watchdog: request stuck" in text
    assert "GET /sleep/1.0 (sleep)" in text and "/sleep/0.1" not in text
    assert "stack, innermost first:" in text
    assert "INFO in flask_utd.watchdog: flask-utd watchdog: request ended after" in text


def test_json_lines_with_opentelemetry_names(socket_dir: str) -> None:
    lines = _run_plain(socket_dir, "json").splitlines()
    assert len(lines) == 2, lines
    stuck, ended = (json.loads(line) for line in lines)
    assert list(stuck)[:4] == ["timestamp", "severity_text", "severity_number", "body"]
    assert stuck["severity_text"] == "WARNING" and stuck["severity_number"] == 13
    assert ended["severity_text"] == "INFO" and ended["severity_number"] == 9
    for key in (
        "thread.id",
        "thread.name",
        "code.function",
        "code.filepath",
        "code.lineno",
        "http.request.method",
        "url.path",
        "trace_id",
        "span_id",
        "process.pid",
    ):
        assert key in stuck, key
    assert stuck["url.path"] == "/sleep/1.0" and stuck["code.function"] == "sleep"
    assert stuck["timestamp"].endswith("Z") and "T" in stuck["timestamp"]
    assert ended["url.path"] == "/sleep/1.0"
    assert 1.0 <= ended["flask_utd.elapsed_s"] < 1.3


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (TRACEPARENT, ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")),
        (f" {TRACEPARENT} ", ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")),
        # A later version may add fields after a dash.
        (
            TRACEPARENT.replace("00-", "01-", 1) + "-more",
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
        ),
        (TRACEPARENT.upper(), None),
        (TRACEPARENT.replace("00-", "ff-", 1), None),
        ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", None),
        ("garbage", None),
        (None, None),
    ],
)
def test_traceparent(header: str | None, expected: tuple[str, str] | None) -> None:
    environ = {} if header is None else {"HTTP_TRACEPARENT": header}
    assert trace_of(environ) == expected


# -- what it costs ----------------------------------------------------------------


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")
def test_an_idle_watchdog_never_wakes_up(watched_app: Flask) -> None:
    watched_app.test_client().get("/sleep/0.0")
    dog = watchdog.current_watchdog()
    assert dog is not None and dog.thread is not None
    assert dog.thread.native_id is not None
    tid = dog.thread.native_id
    # It looks once, half a threshold after the request woke it, then sleeps.
    wait_for(lambda: tracking._wake is not None, timeout=5)
    last = [-1]

    def settled() -> bool:
        now = context_switches(tid)
        quiet = now == last[0]
        last[0] = now
        return quiet

    wait_for(settled, timeout=10, interval=0.3)
    before, wakeups = context_switches(tid), dog.wakeups
    threading.Event().wait(2.5)  # more than 10 half thresholds
    assert context_switches(tid) - before == 0
    assert dog.wakeups == wakeups
    # And the next request wakes it, once.
    watched_app.test_client().get("/sleep/0.0")
    wait_for(lambda: dog.wakeups >= wakeups + 1, timeout=5)


def _steady_traffic(
    seconds: float, served: Callable[[], int] | None
) -> tuple[watchdog.Watchdog, int, float]:
    """Short requests one after another for ``seconds`` through a tracked WSGI
    app, as a sync worker serves them: the watchdog's wake-ups meanwhile."""
    calls = [0]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls[0] += 1
        time.sleep(0.002)
        return [b"ok"]

    tracked = RequestTracker(app)
    dog = watchdog.start_watchdog(
        threshold=THRESHOLD,
        fmt="text",
        role="worker",
        worker_id=1,
        socket_dir="/nonexistent",
        instance="1",
        served=(lambda: calls[0]) if served is not None else None,
    )
    assert dog is not None
    wait_for(lambda: tracking._wake is not None, timeout=5)
    before = dog.wakeups
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        tracked({"PATH_INFO": "/", "REQUEST_METHOD": "GET"}, None)  # type: ignore[arg-type]
        time.sleep(0.003)  # between requests, as a worker waits for the next
    took = time.monotonic() - started
    return dog, dog.wakeups - before, took


def test_steady_traffic_wakes_it_once_per_half_threshold() -> None:
    dog, wakeups, took = _steady_traffic(3.0, served=lambda: 0)
    try:
        # One wake-up by the first request, then one per half threshold.
        assert wakeups <= took / (THRESHOLD / 2) + 2, (wakeups, took)
    finally:
        watchdog.stop_watchdog()


def test_without_a_served_count_at_most_twice_per_half_threshold() -> None:
    """Outside uWSGI and gunicorn nothing counts the requests served: a look
    that finds none in flight sends the watchdog to sleep, and the next request
    wakes it."""
    dog, wakeups, took = _steady_traffic(3.0, served=None)
    try:
        assert wakeups <= 2 * (took / (THRESHOLD / 2)) + 2, (wakeups, took)
    finally:
        watchdog.stop_watchdog()


def test_a_request_before_the_thread_first_runs_tells_the_master(
    tmp_path: Any,
) -> None:
    """A worker's watchdog counts as asleep from start(), not from its thread's
    first look: a request that comes before that look tells the master. Found
    under gunicorn: a worker took its first request while its new watchdog
    thread still waited for the GIL, and held the GIL (a regex); the arbiter
    never heard of the worker and logged nothing before the kill."""
    master = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    master.bind(str(tmp_path / "master.watchdog"))
    master.settimeout(5)
    first_look = threading.Event()

    def served() -> int:
        # The server's count, read at each look: in the watchdog's thread it
        # stands still, as a thread that does not get the GIL would.
        if threading.current_thread() is not threading.main_thread():
            first_look.wait(10)
        return 0

    dog = watchdog.Watchdog(
        threshold=THRESHOLD,
        fmt="json",
        role="worker",
        worker_id=1,
        directory=str(tmp_path),
        socket_dir=str(tmp_path),
        instance="1",
        master=str(tmp_path / "master.watchdog"),
        served=served,
    )
    inside = threading.Event()
    leave = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        inside.set()
        leave.wait(10)
        return [b"ok"]

    entered = time.monotonic()
    dog.start()
    request = threading.Thread(
        target=RequestTracker(app), args=({"PATH_INFO": "/"}, None), daemon=True
    )
    try:
        request.start()
        assert inside.wait(5)
        kind, pid, threshold, when, as_json = watchdog._NOTICE.unpack(master.recv(64))
        assert (kind, pid, threshold, as_json) == (b"w", os.getpid(), THRESHOLD, True)
        assert entered <= when <= time.monotonic()
    finally:
        leave.set()
        first_look.set()
        request.join(5)
        dog.stop()
        master.close()
