"""``GET /_utd/metrics``: the agents' cheap ``stats``, the exposition made by
prometheus_client (and read back with its own parsers), who may read it, and the
admin listeners of a real uWSGI master and a real gunicorn arbiter."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from demo_app.server import ROOT
from demo_app.server import GunicornServer
from flask_utd.agent import snapshot
from flask_utd.core import wire
from flask_utd.core.collector import collect_stats
from flask_utd.core.report import Process
from flask_utd.core.report import Report
from flask_utd.core.sockets import instance_dir
from flask_utd.ext.prometheus import exposition
from flask_utd.ext.signing import make_token
from flask_utd.servers.admin import SERVED_BY_ADMIN
from flask_utd.servers.admin import start_admin
from flask_utd.servers.admin import stop_admin
from tests.helpers import Servers
from tests.helpers import need_uwsgi
from tests.helpers import report_of
from tests.helpers import wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str, *, openmetrics: bool = False) -> Samples:
    """``{(name, sorted labels): value}`` as prometheus_client's parser reads
    ``text``."""
    parse = openmetrics_families if openmetrics else text_string_to_metric_families
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parse(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def by_name(found: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in found.items() if n == name}


# -- in this process ------------------------------------------------------------


@pytest.fixture
def held(app: Flask) -> Iterator[threading.Event]:
    """One request of ``app`` held in a thread (``/held``) until the test ends;
    it is the first request, so it starts this process's agent."""
    release = threading.Event()
    entered = threading.Event()

    @app.get("/held")
    def held_view() -> str:
        entered.set()
        release.wait(30)
        return "released\n"

    client = app.test_client()
    thread = threading.Thread(target=client.get, args=("/held",), daemon=True)
    thread.start()
    assert entered.wait(10)
    yield release
    release.set()
    thread.join(10)


def test_stats_answers_without_walking_a_stack(
    socket_dir: str, held: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = os.path.join(
        instance_dir(socket_dir, str(os.getpid())), f"{os.getpid()}.sock"
    )
    wait_for(lambda: os.path.exists(path))

    def no_walk(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("stats walked the stacks")

    monkeypatch.setattr(sys, "_current_frames", no_walk)
    monkeypatch.setattr(snapshot, "thread_reports", no_walk)
    monkeypatch.setattr(snapshot, "process_report", no_walk)
    time.sleep(0.05)  # the held request is at least this old
    answer = json.loads(wire.call(path, time.monotonic() + 5, "stats"))
    assert answer["pid"] == os.getpid() and answer["status"] == "ok"
    assert answer["role"] == "process" and answer["worker_id"] is None
    (age,) = answer["requests"]
    assert 0.05 <= age < 30


def test_collect_stats_counts_and_statuses(
    socket_dir: str, held: threading.Event
) -> None:
    instance = str(os.getpid())
    directory = instance_dir(socket_dir, instance)
    wait_for(lambda: os.path.exists(os.path.join(directory, f"{instance}.sock")))
    # A process that does not answer, one that is gone, and a worker of the
    # server's roster that has no socket.
    silent = socket.socket(socket.AF_UNIX)
    silent.bind(os.path.join(directory, "900001.sock"))
    silent.listen(1)
    gone = socket.socket(socket.AF_UNIX)
    gone.bind(os.path.join(directory, "900002.sock"))
    gone.close()
    try:
        stats = collect_stats(
            socket_dir,
            instance,
            timeout=0.5,
            roster=[{"pid": 900003, "worker_id": 3}],
            slow_after=0.0,
        )
    finally:
        silent.close()
    by_pid = {p["pid"]: p for p in stats["processes"]}
    me = by_pid[os.getpid()]
    assert me["status"] == "ok" and me["in_flight"] == 1 and me["stuck"] == 1
    assert me["oldest_s"] > 0
    assert by_pid[900001]["status"] == "timeout" and "in_flight" not in by_pid[900001]
    assert by_pid[900002]["status"] == "stale"
    assert by_pid[900003]["status"] == "error" and by_pid[900003]["worker_id"] == 3
    assert stats["elapsed_s"] < 0.5 + 0.25
    assert not any("threads" in p for p in stats["processes"])


STATS: dict[str, Any] = {
    "host": "web-1",
    "instance": "100",
    "slow_after": 5.0,
    "elapsed_s": 0.01,
    "processes": [
        {"pid": 100, "role": "master", "worker_id": None, "status": "ok",
         "error": None, "in_flight": 0, "oldest_s": 0.0, "stuck": 0,
         "watchdog_records": 1},
        {"pid": 101, "role": "worker", "worker_id": 1, "status": "ok",
         "error": None, "in_flight": 2, "oldest_s": 12.5, "stuck": 1,
         "watchdog_records": 3},
        # An old worker 1 still exiting beside its replacement: added up.
        {"pid": 103, "role": "worker", "worker_id": 1, "status": "ok",
         "error": None, "in_flight": 1, "oldest_s": 40.0, "stuck": 1,
         "watchdog_records": 2},
        {"pid": 102, "role": "worker", "worker_id": 2, "status": "timeout",
         "error": "process 102 did not answer"},
        {"pid": 104, "role": "worker", "worker_id": 3, "status": "unsafe",
         "error": "ghosts", "in_flight": 1, "oldest_s": 1.0, "stuck": 0},
    ],
}  # fmt: skip


def test_exposition_is_prometheus_clients_own() -> None:
    body, content_type = exposition(STATS)
    assert content_type.startswith("text/plain; version=0.0.4")
    found = samples(body.decode())
    assert by_name(found, "flask_utd_requests_in_flight") == {
        (("role", "master"), ("worker_id", "")): 0,
        (("role", "worker"), ("worker_id", "1")): 3,
        (("role", "worker"), ("worker_id", "3")): 1,
    }
    assert value(found, "flask_utd_oldest_request_age_seconds", role="worker",
                 worker_id="1") == 40.0  # fmt: skip
    assert value(found, "flask_utd_stuck_requests", role="worker", worker_id="1") == 2
    assert by_name(found, "flask_utd_processes") == {
        (("status", "ok"),): 3,
        (("status", "timeout"),): 1,
        (("status", "refused"),): 0,
        (("status", "stale"),): 0,
        (("status", "unsafe"),): 1,
        (("status", "error"),): 0,
    }
    # The watchdog's records: a counter, only where a watchdog runs.
    assert by_name(found, "flask_utd_watchdog_records_total") == {
        (("role", "master"), ("worker_id", "")): 1,
        (("role", "worker"), ("worker_id", "1")): 5,
    }
    assert b"# TYPE flask_utd_watchdog_records_total counter" in body
    assert b"# TYPE flask_utd_oldest_request_age_seconds gauge" in body
    assert b"UTD_SLOW_REQUEST (5 s)" in body

    # OpenMetrics, when the scraper asks for it.
    body, content_type = exposition(
        STATS, "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
    )
    assert content_type.startswith("application/openmetrics-text")
    om = samples(body.decode(), openmetrics=True)
    assert value(om, "flask_utd_processes", status="timeout") == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_finds_nothing_to_lint() -> None:
    body, _ = exposition(STATS)
    out = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_apps_port_needs_a_token_and_the_admin_listener_does_not(
    app: Flask, client: Any, held: threading.Event
) -> None:
    assert client.get("/_utd/metrics").status_code == 403
    assert client.get("/_utd/metrics?token=forged").get_json() == {
        "error": "invalid token"
    }
    token = make_token(app.extensions["utd"].settings.secret_key, 60)
    response = client.get(f"/_utd/metrics?token={token}")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    found = samples(response.get_data(as_text=True))
    # The held request; the scrape itself is not counted.
    assert value(found, "flask_utd_requests_in_flight", role="process",
                 worker_id="") == 1  # fmt: skip
    # What the admin listener's WSGI wrapper marks needs no token.
    response = client.get("/_utd/metrics", environ_base={SERVED_BY_ADMIN: True})
    assert response.status_code == 200
    # A header cannot pose as that mark.
    response = client.get("/_utd/metrics", headers={"Flask-Utd.Admin-Listener": "1"})
    assert response.status_code == 403

    listener = start_admin(app, ("127.0.0.1", 0))
    try:
        with urllib.request.urlopen(
            f"http://{listener.address}/_utd/metrics", timeout=10
        ) as answer:
            assert answer.status == 200
            found = samples(answer.read().decode())
        assert value(found, "flask_utd_processes", status="ok") == 1
    finally:
        stop_admin()


# -- a real uWSGI master and a real gunicorn arbiter --------------------------------

UWSGI_OPTIONS = [
    "--module",
    "tests.apps.plain:app",
    "--master",
    "--workers",
    "2",
    "--die-on-term",
    "--py-call-uwsgi-fork-hooks",
]
SECRET = "metrics-secret"


def get(url: str, timeout: float = 10) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return (
                response.status,
                response.headers["Content-Type"],
                response.read().decode(),
            )
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def send(url: str) -> None:
    """A request that is left to hang, in a daemon thread."""

    def run() -> None:
        try:
            urllib.request.urlopen(url, timeout=120).read()
        except OSError:
            pass  # the server is stopped under it at the test's end

    threading.Thread(target=run, daemon=True).start()


def workers_in(report: Report, function: str) -> list[Process]:
    return [
        p
        for p in report["processes"]
        if any(t["frames"] and t["frames"][-1]["function"] == function
               for t in p["threads"])
    ]  # fmt: skip


@pytest.mark.uwsgi
def test_uwsgi_master_serves_metrics_while_every_worker_is_busy(
    servers: Servers, socket_dir: str
) -> None:
    server = servers.start(
        need_uwsgi(),
        UWSGI_OPTIONS,
        env={
            "DEMO_SECRET_KEY": SECRET,
            "DEMO_UTD_ADMIN_LISTEN": "127.0.0.1:0",
            "DEMO_UTD_SLOW_REQUEST": "1",
            "DEMO_GIL_SECONDS": "30",
            # The master's watchdog would log the worker holding the GIL
            # through faulthandler, whose signal ends libc's sleep (in /gil) at
            # once: the worker would not stay silent for this test.
            "DEMO_UTD_WATCHDOG": "null",
        },
    )
    match = wait_for(
        lambda: re.search(
            r"admin listener of the uWSGI master \(pid \d+\) bound to (\S+)",
            server.log(),
        )
    )
    admin = f"http://{match.group(1)}/_utd/metrics"

    # One worker stuck in /hello; the other serves the app's own port, where
    # the metrics need the dump's token.
    send(server.url("/hello"))
    (stuck,) = wait_for(lambda: workers_in(report_of(server, socket_dir), "hello"))
    status, _, body = get(server.url("/_utd/metrics"))
    assert status == 403 and json.loads(body) == {"error": "missing token"}
    status, _, body = get(server.url(f"/_utd/metrics?token={make_token(SECRET, 60)}"))
    assert status == 200
    assert value(samples(body), "flask_utd_requests_in_flight", role="worker",
                 worker_id=str(stuck["worker_id"])) == 1  # fmt: skip

    # The other worker now holds the GIL in C: its agent cannot answer, nor can
    # any worker serve the app's port; the master's admin listener answers.
    send(server.url("/gil"))
    worker = str(stuck["worker_id"])

    def silent_and_stuck() -> bool:
        status, _, body = get(admin)
        found = samples(body) if status == 200 else {}
        return (
            found.get(("flask_utd_processes", (("status", "timeout"),))) == 1
            and value(found, "flask_utd_stuck_requests", role="worker",
                      worker_id=worker) == 1
        )  # fmt: skip

    wait_for(silent_and_stuck, timeout=30)
    started = time.monotonic()
    status, content_type, body = get(admin)
    elapsed = time.monotonic() - started
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert elapsed < 2.0 + 1.0  # UTD_TIMEOUT for the silent worker, plus slack
    found = samples(body)
    assert by_name(found, "flask_utd_requests_in_flight") == {
        (("role", "master"), ("worker_id", "")): 0,
        (("role", "worker"), ("worker_id", worker)): 1,
    }
    assert value(found, "flask_utd_oldest_request_age_seconds", role="worker",
                 worker_id=worker) >= 1.0  # fmt: skip
    assert (
        value(found, "flask_utd_stuck_requests", role="worker", worker_id=worker) == 1
    )
    assert value(found, "flask_utd_processes", status="ok") == 2
    assert value(found, "flask_utd_processes", status="timeout") == 1
    # Nothing but /_utd/ on the listener.
    assert get(admin.replace("/_utd/metrics", "/hello"))[0] == 404
    if shutil.which("promtool"):
        out = subprocess.run(["promtool", "check", "metrics"], input=body.encode(),
                             capture_output=True, timeout=30)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.uwsgi
def test_uwsgi_without_fork_hooks_reports_the_master_unsafe(
    servers: Servers, socket_dir: str
) -> None:
    """No admin listener there (the log says why); the app's port, with a
    token, shows the master as unsafe."""
    server = servers.start(
        need_uwsgi(),
        [o for o in UWSGI_OPTIONS if o != "--py-call-uwsgi-fork-hooks"],
        env={"DEMO_SECRET_KEY": SECRET},
    )
    wait_for(
        lambda: (
            sum(p["status"] == "ok" for p in report_of(server, socket_dir)["processes"])
            == 2
        )
    )
    status, _, body = get(server.url(f"/_utd/metrics?token={make_token(SECRET, 60)}"))
    assert status == 200
    found = samples(body)
    assert value(found, "flask_utd_processes", status="unsafe") == 1
    assert value(found, "flask_utd_processes", status="ok") == 2
    assert ("flask_utd_requests_in_flight",
            (("role", "master"), ("worker_id", ""))) not in found  # fmt: skip


GUNICORN = str(Path(sys.executable).parent / "gunicorn")
CONF = str(ROOT / "tests" / "apps" / "gunicorn_conf.py")


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def scrape_unix(path: str, target: str = "/_utd/metrics") -> tuple[int, str, str]:
    conn = UnixConnection(path)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        return (
            response.status,
            response.getheader("Content-Type") or "",
            (response.read().decode()),
        )
    finally:
        conn.close()


def test_gunicorn_arbiter_serves_metrics(servers: Servers, socket_dir: str) -> None:
    """The hooks of tests/apps/gunicorn_conf.py, no --preload: the arbiter's own
    admin app, set up from the environment."""
    path = os.path.join(socket_dir, "admin.sock")
    env = {
        "UTD_SOCKET_DIR": socket_dir,
        "UTD_ADMIN_LISTEN": f"unix:{path}",
        "UTD_SECRET_KEY": SECRET,
        "DEMO_UTD_SECRET_KEY": SECRET,
        "DEMO_HELLO_SECONDS": "60",
    }
    server = servers.launch(
        GunicornServer,
        GUNICORN,
        ["-c", CONF, "-w", "2", "--timeout", "120", "tests.apps.plain:app"],
        env,
    )
    wait_for(
        lambda: (
            sum(p["status"] == "ok" for p in report_of(server, socket_dir)["processes"])
            == 3
        )
    )
    send(server.url("/hello"))
    (stuck,) = wait_for(lambda: workers_in(report_of(server, socket_dir), "hello"))
    status, content_type, body = scrape_unix(path)
    assert status == 200, body
    assert content_type.startswith("text/plain; version=0.0.4")
    found = samples(body)
    others = {"1", "2"} - {str(stuck["worker_id"])}
    assert by_name(found, "flask_utd_requests_in_flight") == {
        (("role", "master"), ("worker_id", "")): 0,
        (("role", "worker"), ("worker_id", str(stuck["worker_id"]))): 1,
        **{(("role", "worker"), ("worker_id", other)): 0 for other in others},
    }
    assert value(found, "flask_utd_processes", status="ok") == 3
    # The dump there still needs its token.
    assert scrape_unix(path, "/_utd/dump")[0] == 403
