"""The request each thread serves: recorded by utd_bp, shown in the dump."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from flask import Flask

from flask_utd import utd_bp
from flask_utd.agent import tracking
from flask_utd.agent.lifecycle import stop_agents
from flask_utd.agent.snapshot import process_report
from flask_utd.core.report import Report
from flask_utd.core.report import Request
from flask_utd.core.report import Thread
from tests.helpers import Servers
from tests.helpers import lean_dump
from tests.helpers import need_uwsgi
from tests.helpers import report_of
from tests.helpers import wait_for


@pytest.fixture(params=[False], ids=["default"])
def parked_app(
    request: pytest.FixtureRequest, socket_dir: str
) -> Iterator[tuple[Flask, threading.Event]]:
    app = Flask("tracked")
    app.config.update(
        TESTING=True,
        SECRET_KEY="test-secret",
        UTD_SOCKET_DIR=socket_dir,
        UTD_CAPTURE_QUERY=request.param,
    )
    app.register_blueprint(utd_bp)
    release = threading.Event()

    @app.get("/orders/<int:n>")
    def order(n: int) -> str:
        release.wait(30)
        return "ok"

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    yield app, release
    release.set()
    stop_agents()


def _serve_in_thread(app: Flask, url: str, **kwargs: Any) -> threading.Thread:
    def run() -> None:
        app.test_client().get(url, **kwargs)

    t = threading.Thread(target=run, name="serving")
    t.start()
    return t


def _thread_of(t: threading.Thread) -> Thread:
    report = process_report(
        role="process",
        worker_id=None,
    )
    return next(th for th in report["threads"] if th["ident"] == t.ident)


def _request_of(t: threading.Thread) -> Request:
    request = _thread_of(t)["request"]
    assert request is not None, "the thread no longer serves its request"
    return request


def test_request_context_of_a_thread_and_its_end(
    parked_app: tuple[Flask, threading.Event],
) -> None:
    app, release = parked_app
    before = time.time()
    t = _serve_in_thread(
        app, "/orders/5?card=4111", headers={"X-Request-ID": "abc-123"}
    )
    me = wait_for(lambda: _thread_of(t)["request"])
    assert me["method"] == "GET"
    assert me["path"] == "/orders/5"  # no query string by default
    assert me["endpoint"] == "order"
    assert me["request_id"] == "abc-123"
    started = datetime.fromisoformat(me["started_at"])
    offset = started.utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    assert before - 1 <= started.timestamp() <= time.time()
    later = wait_for(lambda: (r := _request_of(t))["elapsed_s"] > me["elapsed_s"] and r)
    assert later["started_at"] == me["started_at"]
    # A thread serving a request always gets its OS state, whatever it waits on.
    serving = wait_for(
        lambda: (th := _thread_of(t))["wait"] == "waiting-condition" and th
    )
    assert serving["os_state"] == "S"
    release.set()
    t.join(10)
    assert t.ident not in tracking._current  # teardown forgot it


@pytest.mark.parametrize("parked_app", [True], ids=["capture"], indirect=True)
def test_query_string_only_when_asked(
    parked_app: tuple[Flask, threading.Event],
) -> None:
    app, release = parked_app
    t = _serve_in_thread(app, "/orders/5?page=2")
    me = wait_for(lambda: _thread_of(t)["request"])
    assert me["path"] == "/orders/5?page=2" and me["request_id"] is None
    release.set()
    t.join(10)


def test_a_failing_request_is_forgotten_too(
    parked_app: tuple[Flask, threading.Event],
) -> None:
    app, _ = parked_app
    app.testing = False  # let Flask turn the error into a 500
    assert app.test_client().get("/boom").status_code == 500
    assert threading.get_ident() not in tracking._current


def _get(url: str, request_id: str) -> None:
    request = urllib.request.Request(url, headers={"X-Request-ID": request_id})
    try:
        urllib.request.urlopen(request, timeout=120).read()
    except OSError:
        pass  # the server is stopped under the request at the end of the test


@pytest.mark.uwsgi
def test_stuck_requests_under_uwsgi_with_threads(
    servers: Servers, socket_dir: str
) -> None:
    """2 workers x 2 threads, 4 requests stuck in /hello: the summary lists all
    four, oldest first, each on its worker and thread, at the app's line."""
    binary = need_uwsgi()
    server = servers.start(
        binary,
        [
            "--module",
            "tests.apps.plain:app",
            "--master",
            "--workers",
            "2",
            "--threads",
            "2",
            "--py-call-uwsgi-fork-hooks",
            "--need-app",
            "--die-on-term",
        ],
        env={"DEMO_UTD_SLOW_REQUEST": "0.5"},
    )
    for n in range(4):
        threading.Thread(
            target=_get,
            args=(server.url("/hello?token=s3cret"), f"req-{n}"),
            daemon=True,
        ).start()
        time.sleep(0.1)  # distinct start times, to check the order

    def four_stuck() -> Report | None:
        report = report_of(server, socket_dir, slow_after=0.5)
        return report if len(report["summary"]["stuck_requests"]) == 4 else None

    report = wait_for(four_stuck, timeout=30)
    stuck = report["summary"]["stuck_requests"]
    assert [s["elapsed_s"] for s in stuck] == sorted(
        (s["elapsed_s"] for s in stuck), reverse=True
    )
    assert {s["pid"] for s in stuck} == {
        p["pid"] for p in report["processes"] if p["role"] == "worker"
    }
    assert len({(s["pid"], s["ident"]) for s in stuck}) == 4
    assert sorted(s["request_id"] for s in stuck) == [f"req-{n}" for n in range(4)]
    for s in stuck:
        assert (s["method"], s["path"], s["endpoint"]) == ("GET", "/hello", "hello")
        assert s["role"] == "worker" and s["worker_id"] in (1, 2)
        assert s["wait"] == "sleeping"
        assert s["thread"].startswith("uWSGIWorker")  # a uWSGI core thread
        assert s["app_frame"]["file"].endswith("tests/apps/plain.py")
        assert s["app_frame"]["function"] == "hello"
    assert "s3cret" not in str(report)
    (group,) = [g for g in report["summary"]["stack_groups"] if g["count"] == 4]
    assert group["processes"] == 2 and group["wait"] == "sleeping"

    # The lean CLI's text opens with them.
    out = lean_dump(socket_dir, "--instance", str(server.pid), "--slow-after", "0.5")
    assert out.returncode == 0, out.stderr
    head = out.stdout.split("Full dump:")[0]
    assert head.splitlines()[3] == (
        "4 requests in progress, 4 stuck (older than 0.5 s), oldest first:"
    )
    assert head.count("  stuck ") == 4
    assert head.count("GET /hello (hello) in worker ") == 4
    assert "4 threads in 2 workers: sleeping (time.sleep) at " in head


def test_a_request_held_in_an_earlier_before_request_is_shown(socket_dir: str) -> None:
    """The tracker is WSGI middleware: it sees a request before any of the app's
    ``before_request`` functions, even those registered before ``utd_bp``."""
    app = Flask("gated")
    app.config.update(SECRET_KEY="s", UTD_SOCKET_DIR=socket_dir, UTD_CAPTURE_QUERY=True)
    gate = threading.Event()

    @app.before_request
    def hold() -> None:
        gate.wait(30)

    @app.get("/orders/<int:n>")
    def order(n: int) -> str:
        return "ok"

    app.register_blueprint(utd_bp)
    try:
        routed = _serve_in_thread(app, "/orders/7?page=2")
        unrouted = _serve_in_thread(app, "/nowhere?card=4111")
        me = wait_for(lambda: _thread_of(routed)["request"])
        assert (me["path"], me["endpoint"]) == ("/orders/7?page=2", "order")
        # No route, no endpoint; and no query either, even with UTD_CAPTURE_QUERY.
        other = wait_for(lambda: _thread_of(unrouted)["request"])
        assert (other["path"], other["endpoint"]) == ("/nowhere", None)
    finally:
        gate.set()
        stop_agents()
    routed.join(10)
    unrouted.join(10)
    assert routed.ident not in tracking._current
    assert unrouted.ident not in tracking._current


def test_an_app_called_from_another_gives_the_outer_request_back(
    socket_dir: str,
) -> None:
    inner = Flask("inner")
    outer = Flask("outer")
    seen: list[str] = []
    for app in (inner, outer):
        app.config.update(SECRET_KEY="s", UTD_SOCKET_DIR=socket_dir)
        app.register_blueprint(utd_bp)

    def current_path() -> str:
        request = tracking.request_of(threading.get_ident())
        assert request is not None
        return str(request["path"])

    @inner.get("/in")
    def in_() -> str:
        seen.append(current_path())
        return "in"

    @outer.get("/out")
    def out() -> str:
        inner.test_client().get("/in")
        seen.append(current_path())
        return "out"

    try:
        assert outer.test_client().get("/out").status_code == 200
    finally:
        stop_agents()
    assert seen == ["/in", "/out"]
    assert threading.get_ident() not in tracking._current


@pytest.mark.parametrize("style", ["blueprint", "extension"])
def test_the_tracker_wraps_the_app_once(style: str, socket_dir: str) -> None:
    from flask_utd import UTD

    app = Flask("wrapped")
    app.config.update(SECRET_KEY="s", UTD_SOCKET_DIR=socket_dir)
    if style == "extension":
        UTD(app)
    else:
        app.register_blueprint(utd_bp)
    assert isinstance(app.wsgi_app, tracking.RequestTracker)
    assert not isinstance(app.wsgi_app.wsgi_app, tracking.RequestTracker)
