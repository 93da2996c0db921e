"""The watchdog against real servers: every stuck request is in the server's log
before the server's kill line (uWSGI's harakiri, gunicorn's timeout); a request
that ends before the threshold writes nothing; and a worker whose thread holds
the GIL is logged by the master through faulthandler."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from flask_utd.core.collector import collect
from tests.helpers import SUPPORTED
from tests.helpers import Gunicorns
from tests.helpers import Servers
from tests.helpers import need_uwsgi
from tests.helpers import wait_for
from tests.lifecycle import layout
from tests.lifecycle import no_crash

PLAIN = ["--module", "tests.apps.plain:app"]
UWSGI = [*PLAIN, "--master", "--py-call-uwsgi-fork-hooks", "--die-on-term"]

STUCK = re.compile(
    r"WARNING in flask_utd\.watchdog: flask-utd watchdog: request stuck for"
    r" (?P<elapsed>[\d.]+) s \(threshold (?P<threshold>[\d.]+) s\):"
    r" (?P<method>\S+) (?P<path>\S+) .*? in worker (?P<worker>\d+) \(pid (?P<pid>\d+)\)"
)
HARAKIRI = re.compile(r"HARAKIRI ON WORKER (?P<worker>\d+) \(pid: (?P<pid>\d+)")
TIMEOUT = re.compile(r"WORKER TIMEOUT \(pid:(?P<pid>\d+)\)")
CAPTURED = re.compile(
    r"WARNING in flask_utd\.watchdog: flask-utd watchdog: worker (?P<worker>\d+)"
    r" \(pid (?P<pid>\d+)\) busy for (?P<busy>[\d.]+) s \(threshold [\d.]+ s\) and its"
    r" agent does not answer: a thread may hold the GIL; captured by the master"
    r" \(pid (?P<master>\d+)\) through faulthandler"
)


def fire(url: str, results: list[str] | None = None) -> threading.Thread:
    """Send a request in the background (it may never get an answer)."""

    def run() -> None:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                answer = response.read().decode()
        except OSError as err:
            answer = f"error: {err}"
        if results is not None:
            results.append(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def json_records(log: str) -> list[tuple[int, dict[str, Any]]]:
    """``(offset in the log, record)`` of every JSON line of the watchdog."""
    found = []
    offset = 0
    for line in log.splitlines(keepends=True):
        if line.startswith("{") and '"flask_utd.' in line:
            found.append((offset, json.loads(line)))
        offset += len(line)
    return found


# -- point 5: before the kill ------------------------------------------------------


@pytest.mark.uwsgi
@pytest.mark.parametrize("version", SUPPORTED)
def test_uwsgi_harakiri_each_stuck_request_is_logged_before_its_kill(
    servers: Servers, socket_dir: str, version: str
) -> None:
    # harakiri 4: UTD_WATCHDOG "auto" is 2.4 s, looked at every 1.2 s.
    server = servers.start(
        need_uwsgi(version),
        [*UWSGI, "--workers", "3", "--harakiri", "4"],
        env={"DEMO_HELLO_SECONDS": "30"},
    )
    wait_for(lambda: layout(socket_dir, server.pid, count=3))
    fire(server.url("/hello"))
    fire(server.url("/hello"))
    quick: list[str] = []
    fire(server.url("/pid?sleep=1"), quick).join(30)
    assert quick and quick[0].strip().isdigit(), quick
    wait_for(lambda: len(HARAKIRI.findall(server.log())) >= 2, timeout=40)
    log = server.log()
    kills = {m["pid"]: m.start() for m in HARAKIRI.finditer(log)}
    records = list(STUCK.finditer(log))
    for pid, killed_at in kills.items():
        (record,) = [r for r in records if r["pid"] == pid]
        assert record.start() < killed_at, log[-4000:]
        assert record["path"] == "/hello" and record["threshold"] == "2.4"
        assert 2.4 <= float(record["elapsed"]) <= 4.0
    # Exactly the two stuck requests: nothing of the one that took 1 s.
    assert len(records) == 2
    assert "/pid" not in "".join(r.group(0) for r in records)
    no_crash(log, killed=2)


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_gunicorn_timeout_stuck_requests_are_logged_first(
    gunicorns: Gunicorns,
    socket_dir: str,
    worker_class: str,
) -> None:
    """sync: gunicorn kills the worker past --timeout (its heartbeat stops while
    it serves); the record is in the log before. gthread: a request stuck in a
    thread is never killed (the main loop heartbeats on); the record comes at the
    same time, and its end when the request ends."""
    options = ["-w", "2", "-k", worker_class, "--timeout", "4"]
    if worker_class == "gthread":
        options += ["--threads", "2"]
    hello = "30" if worker_class == "sync" else "6"
    server = gunicorns.start(
        [*options, "tests.apps.plain:app"],
        env={"DEMO_HELLO_SECONDS": hello, "DEMO_UTD_WATCHDOG_FORMAT": "json"},
    )
    wait_for(lambda: layout(socket_dir, server.pid, count=2))
    answers: list[str] = []
    stuck = fire(server.url("/hello"), answers)
    quick: list[str] = []
    fire(server.url("/pid?sleep=1"), quick).join(30)
    assert quick and quick[0].strip().isdigit(), quick
    if worker_class == "sync":
        killed = wait_for(lambda: TIMEOUT.search(server.log()), timeout=30)
        log = server.log()
        killed_at, victim = log.index(killed.group(0)), int(killed["pid"])
    else:
        stuck.join(30)
        assert answers and answers[0].startswith("hello"), answers
        wait_for(lambda: len(json_records(server.log())) >= 2, timeout=10)
        log = server.log()
        assert not TIMEOUT.search(log), log[-3000:]
        killed_at, victim = len(log), None
    records = json_records(log)
    stuck_records = [
        (at, r) for at, r in records if r["event.name"] == "flask_utd.watchdog.stuck"
    ]
    ((at, record),) = stuck_records
    assert at < killed_at
    assert record["url.path"] == "/hello" and record["http.request.method"] == "GET"
    assert record["flask_utd.threshold_s"] == 2.4
    assert 2.4 <= record["flask_utd.elapsed_s"] <= 4.0
    assert record["flask_utd.role"] == "worker" and record["flask_utd.worker_id"]
    assert record["code.function"] == "hello" and record["flask_utd.moved"] is False
    if victim is not None:
        assert record["process.pid"] == victim
    else:
        (ended,) = [r for _, r in records if r["event.name"].endswith(".ended")]
        assert ended["process.pid"] == record["process.pid"]
        assert 6.0 <= ended["flask_utd.elapsed_s"] < 7.0
    assert not any(r.get("url.path", "").startswith("/pid") for _, r in records)


# -- point 6: a worker whose thread holds the GIL -------------------------------------


@pytest.mark.uwsgi
@pytest.mark.parametrize("version", SUPPORTED)
def test_uwsgi_master_logs_a_worker_holding_the_gil(
    servers: Servers, socket_dir: str, version: str
) -> None:
    # harakiri 8: UTD_WATCHDOG "auto" is 4.8 s. The worker's own watchdog
    # cannot run while the regex holds the GIL; the master's does.
    server = servers.start(
        need_uwsgi(version),
        [*UWSGI, "--workers", "2", "--harakiri", "8"],
        env={"DEMO_REGEX_SECONDS": "40"},
    )
    wait_for(lambda: layout(socket_dir, server.pid, count=2))
    fire(server.url("/regex"))
    killed = wait_for(lambda: HARAKIRI.search(server.log()), timeout=40)
    gone = wait_for(lambda: "is gone after at least" in server.log(), timeout=10)
    assert gone
    log = server.log()
    (captured,) = CAPTURED.finditer(log)
    assert captured["pid"] == killed["pid"] and captured["master"] == str(server.pid)
    assert captured.start() < log.index(killed.group(0)), log[-4000:]
    assert 4.8 <= float(captured["busy"]) < 8.0
    block = log[captured.start() : log.index(killed.group(0))]
    stack = block.split("stack, innermost first:\n")[1].splitlines()
    # The thread in the regex, its view just outside.
    assert "in match" in stack[0] and "in regex_holding_the_gil" in stack[2]
    assert "thread <thread 0x" in block
    # The worker's own watchdog never ran: no other record of that request.
    assert not STUCK.search(log)
    no_crash(log, killed=1)


@pytest.mark.uwsgi
def test_a_worker_that_runs_again_does_not_report_the_same_request(
    servers: Servers, socket_dir: str
) -> None:
    """The master reported the worker through faulthandler; the request goes on
    (in a sleep, the GIL free) past the threshold, where the worker's own
    watchdog would report it: the master's note keeps it silent. The master
    says when the worker runs again."""
    server = servers.start(
        need_uwsgi(),
        [*UWSGI, "--workers", "2"],
        env={"DEMO_REGEX_SECONDS": "6", "DEMO_UTD_WATCHDOG": "1.5"},
    )
    wait_for(lambda: layout(socket_dir, server.pid, count=2))
    answers: list[str] = []
    fire(server.url("/regex?then=3"), answers).join(60)
    assert answers and answers[0].startswith("matched"), answers
    wait_for(lambda: "runs again after" in server.log(), timeout=10)
    log = server.log()
    (captured,) = CAPTURED.finditer(log)
    assert log.index("runs again after") > captured.start()
    assert not STUCK.search(log), log[-4000:]
    assert "request ended after" not in log
    # The note is gone with the episode.
    assert not list((Path(socket_dir) / str(server.pid)).glob("*.stalled"))


@pytest.mark.uwsgi
def test_without_faulthandler_the_master_logs_the_worker_without_its_stack(
    servers: Servers, socket_dir: str
) -> None:
    """No signal is sent (UTD_FAULTHANDLER_SIGNAL_OFFSET = None): the record
    says which worker and for how long, and why there is no stack; libc's sleep
    holding the GIL is not cut short."""
    server = servers.start(
        need_uwsgi(),
        [*UWSGI, "--workers", "2"],
        env={
            "DEMO_GIL_SECONDS": "5",
            "DEMO_UTD_WATCHDOG": "1.5",
            "DEMO_UTD_FAULTHANDLER_SIGNAL_OFFSET": "null",
        },
    )
    wait_for(lambda: layout(socket_dir, server.pid, count=2, faulthandler=False))
    answers: list[str] = []
    started = time.monotonic()
    fire(server.url("/gil"), answers).join(60)
    assert answers == ["slept holding the GIL\n"]
    assert time.monotonic() - started >= 5.0  # not interrupted
    wait_for(lambda: "runs again after" in server.log(), timeout=10)
    log = server.log()
    (captured,) = CAPTURED.finditer(log)
    block = log[captured.start() : log.index("runs again after")]
    assert "it did not register faulthandler, so it was not signalled" in block
    assert "stack, innermost first" not in block
    assert not STUCK.search(log)


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_gunicorn_arbiter_logs_a_worker_holding_the_gil_before_the_kill(
    gunicorns: Gunicorns,
    socket_dir: str,
    worker_class: str,
) -> None:
    """A thread holding the GIL stops the worker's main loop too: gunicorn kills
    it past --timeout (gthread included). The arbiter's record comes first."""
    options = ["-w", "2", "-k", worker_class, "--timeout", "8"]
    if worker_class == "gthread":
        options += ["--threads", "2"]
    server = gunicorns.start(
        [*options, "tests.apps.plain:app"],
        env={"DEMO_REGEX_SECONDS": "40", "DEMO_UTD_WATCHDOG_FORMAT": "json"},
    )
    wait_for(lambda: layout(socket_dir, server.pid, count=2))
    fire(server.url("/regex"))
    killed = wait_for(lambda: TIMEOUT.search(server.log()), timeout=40)

    def gone() -> list[dict[str, Any]]:
        return [
            r
            for _, r in json_records(server.log())
            if r["event.name"].endswith(".ended")
        ]

    try:
        (ended,) = wait_for(gone, timeout=10)
    except AssertionError as err:
        # Failed in 2 of 5 full runs, never alone: the worker took the request
        # before its new watchdog thread first ran, and never told the arbiter
        # (test_watchdog.py::test_a_request_before_the_thread_first_runs_tells_
        # the_master). Say whether the arbiter captured the worker at all.
        stuck = [
            r for _, r in json_records(server.log()) if ".stuck" in r["event.name"]
        ]
        raise AssertionError(f"no end record; stuck records: {stuck}; log tail:\n"
                             f"{server.log()[-3000:]}") from err  # fmt: skip
    log = server.log()
    records = json_records(log)
    ((at, record),) = [
        (at, r) for at, r in records if r["event.name"].endswith(".stuck")
    ]
    assert at < log.index(killed.group(0)), log[-4000:]
    assert record["flask_utd.source"] == "faulthandler"
    assert record["flask_utd.reported_by"] == server.pid
    assert record["process.pid"] == int(killed["pid"])
    assert record["flask_utd.role"] == "worker" and record["flask_utd.worker_id"]
    assert 4.8 <= record["flask_utd.elapsed_s"] < 8.0
    # Where the thread is: in the regex; the app's innermost frame apart.
    assert record["code.function"] == "match"
    assert record["flask_utd.app.function"] == "regex_holding_the_gil"
    assert "in match" in record["code.stacktrace"].splitlines()[-2]
    assert record["flask_utd.instance"] == str(server.pid)
    assert (
        ended["flask_utd.gone"] is True
        and ended["process.pid"] == record["process.pid"]
    )


def test_gunicorn_gevent_each_stuck_greenlet_is_logged(
    gunicorns: Gunicorns, socket_dir: str
) -> None:
    """Under ``gunicorn -k gevent`` every request is a greenlet of one thread:
    each stuck one is its own record (the greenlet's id and name), captured
    through the dump's source of greenlets. A greenlet that spins without
    yielding blocks the hub and every other greenlet, not the watchdog, a real
    OS thread: it is reported too, while it spins."""
    server = gunicorns.start(
        ["-k", "gevent", "-w", "1", "--timeout", "30", "tests.apps.green:app"],
        env={"DEMO_UTD_WATCHDOG": "1", "DEMO_UTD_WATCHDOG_FORMAT": "json"},
    )
    wait_for(lambda: layout(socket_dir, server.pid, count=1))
    fire(server.url("/sleep?seconds=4"))
    fire(server.url("/read?seconds=4"))
    quick: list[str] = []
    fire(server.url("/pid"), quick).join(30)
    assert quick and quick[0].strip().isdigit(), quick

    def in_flight() -> bool:
        report = collect(socket_dir, str(server.pid))
        paths = {
            request["path"]
            for p in report["processes"]
            for t in p["threads"]
            if (request := t.get("request")) is not None
        }
        return {"/sleep", "/read"} <= paths

    wait_for(in_flight, timeout=10)
    spun: list[str] = []
    spinning = fire(server.url("/spin?seconds=3"), spun)

    def stuck_records() -> dict[str, dict[str, Any]] | None:
        found = {
            r["url.path"]: r
            for _, r in json_records(server.log())
            if r["event.name"] == "flask_utd.watchdog.stuck"
        }
        return found if len(found) == 3 else None

    found = wait_for(stuck_records)
    spinning.join(30)
    assert spun == ["spun\n"]
    # Reported while the spin held the hub (it lasts 3 s): the watchdog does
    # not wait on the hub.
    assert 1.0 <= found["/spin"]["flask_utd.elapsed_s"] < 3.0
    assert found["/sleep"]["flask_utd.wait"] == "sleeping"
    assert found["/read"]["flask_utd.wait"] == "io-socket"
    assert found["/spin"]["code.function"] == "spin"
    # Each greenlet's own id, not the thread's that runs them all.
    assert len({r["thread.id"] for r in found.values()}) == 3
    assert all(r["flask_utd.role"] == "worker" for r in found.values())
    assert "/pid" not in found
