"""The core against a real uWSGI: master + 2 workers on loopback."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from demo_app.server import UwsgiServer
from demo_app.server import ini_without_address
from flask_utd.agent.rpc import connect
from flask_utd.core import sockets
from flask_utd.core.report import Process
from flask_utd.core.report import Report
from flask_utd.core.report import Thread
from tests.helpers import SUPPORTED
from tests.helpers import Servers
from tests.helpers import need_uwsgi
from tests.helpers import report_of
from tests.helpers import wait_for

pytestmark = pytest.mark.uwsgi

#: uwsgi.ini's settings (fork hooks on), as the demo runs them.
FORK_HOOKS = ["--py-call-uwsgi-fork-hooks"]
BASE = ["--master", "--workers", "2", "--die-on-term", "--need-app"]
DEMO = ["--module", "demo_app.app:app"]
PLAIN = ["--module", "tests.apps.plain:app"]


def get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def fire(url: str) -> None:
    """Send a request in the background and forget it (it gets stuck by design)."""

    def run() -> None:
        try:
            urllib.request.urlopen(url, timeout=120).read()
        except OSError:
            pass

    threading.Thread(target=run, daemon=True).start()


def workers(report: Report) -> list[Process]:
    return [p for p in report["processes"] if p["role"] == "worker"]


def stuck_in(process: Process, function: str) -> list[Thread]:
    return [
        t
        for t in process["threads"]
        if t["frames"] and t["frames"][-1]["function"] == function
    ]


def both_workers_stuck(server: UwsgiServer, socket_dir: str) -> Report | None:
    report = report_of(server, socket_dir)
    ws = workers(report)
    if len(ws) == 2 and all(w["status"] == "ok" and stuck_in(w, "hello") for w in ws):
        return report
    return None


def workers_answering(server: UwsgiServer, socket_dir: str, n: int = 2) -> Any:
    """A condition for wait_for: the report once ``n`` workers answer ``ok``."""

    def condition() -> Report | None:
        report = report_of(server, socket_dir)
        ok = [w for w in workers(report) if w["status"] == "ok"]
        return report if len(ok) == n else None

    return condition


def assert_threads_alive(report: Report) -> None:
    """No dump shows a thread that is not alive in that process."""
    for process in report["processes"]:
        if process["status"] != "ok":
            continue
        tasks = {int(t) for t in os.listdir(f"/proc/{process['pid']}/task")}
        for thread in process["threads"]:
            assert thread["native_id"] in tasks, (process["pid"], thread["name"])


def assert_no_crash(server: UwsgiServer) -> None:
    log = server.log()
    for sign in ("signal 11", "Segmentation", "DAMN ! worker", "Fatal Python error"):
        assert sign not in log, log[-3000:]


def test_stuck_workers_and_master_thread_appear(
    servers: Servers, socket_dir: str, tmp_path: Path
) -> None:
    binary = need_uwsgi()
    server = servers.start(binary, ini_without_address(tmp_path / "uwsgi.ini"))
    fire(server.url("/hello"))
    fire(server.url("/hello"))
    report = wait_for(lambda: both_workers_stuck(server, socket_dir), timeout=30)
    assert [p["role"] for p in report["processes"]] == ["master", "worker", "worker"]
    master = report["processes"][0]
    assert master["pid"] == server.pid and master["status"] == "ok"
    (counter,) = [t for t in master["threads"] if t["name"] == "demo-counter"]
    assert counter["frames"][-1]["function"] == "count_forever"
    assert counter["daemon"] is False
    assert sorted(w["worker_id"] or 0 for w in workers(report)) == [1, 2]
    for worker in workers(report):
        (hello,) = stuck_in(worker, "hello")
        assert hello["frames"][-1]["code"] == "time.sleep(HELLO_SECONDS)"
        assert hello["name"] == f"uWSGIWorker{worker['worker_id']}Core0"
        assert not hello["is_agent"]
        # The dump was taken by the agent thread, not by the request thread.
        dumpers = [
            t
            for t in worker["threads"]
            if any(f["function"] == "process_report" for f in t["frames"])
        ]
        assert [t["name"] for t in dumpers] == ["utd-agent"]
        assert dumpers[0]["is_agent"] and dumpers[0]["own"] == "agent"
        assert hello["own"] is None and hello["kind"] == "thread"
    assert_threads_alive(report)


def test_killed_worker_comes_back_and_its_socket_is_gone(
    servers: Servers, socket_dir: str, tmp_path: Path
) -> None:
    server = servers.start(need_uwsgi(), ini_without_address(tmp_path / "uwsgi.ini"))
    first = wait_for(workers_answering(server, socket_dir))
    victim = workers(first)[0]
    os.kill(victim["pid"], signal.SIGKILL)
    instance_dir = Path(socket_dir) / str(server.pid)

    def replaced() -> Report | None:
        report = report_of(server, socket_dir)
        ids = {w["worker_id"]: w for w in workers(report) if w["status"] == "ok"}
        new = ids.get(victim["worker_id"])
        if new and new["pid"] != victim["pid"]:
            return report
        return None

    report = wait_for(replaced, timeout=30)
    assert victim["pid"] not in [
        p["pid"] for p in report["processes"] if p["status"] == "ok"
    ]
    assert not (instance_dir / f"{victim['pid']}.sock").exists()
    live = {p["pid"] for p in report_of(server, socket_dir)["processes"]}
    sockets = {int(p.stem) for p in instance_dir.glob("*.sock")}
    assert sockets == live


def test_fifty_dumps_under_default_settings_crash_nothing(
    servers: Servers, socket_dir: str
) -> None:
    """Default uWSGI settings (no fork hooks) and an app with a thread at import."""
    server = servers.start(need_uwsgi(), BASE + DEMO)
    report = wait_for(
        lambda: len((r := report_of(server, socket_dir))["processes"]) == 3 and r
    )
    pids = sorted(p["pid"] for p in report["processes"])
    for _ in range(50):
        report = report_of(server, socket_dir)
        assert sorted(p["pid"] for p in report["processes"]) == pids
        for process in report["processes"]:
            # The master runs no agent and the workers hold ghost thread states:
            # both say so and what to add, instead of risking a crash.
            assert process["status"] == "unsafe", process
            assert "py-call-uwsgi-fork-hooks = true" in (process["error"] or "")
    assert get(server.url("/")).startswith("demo of flask-utd")
    assert_no_crash(server)
    assert server.log().count("flask-utd:") >= 3  # one warning per process


@pytest.mark.parametrize("version", SUPPORTED)
@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("default", []),
        ("fork-hooks", FORK_HOOKS),
        ("osafterfork", ["--py-call-osafterfork"]),
    ],
)
def test_safe_on_every_python_under_every_fork_setting(
    servers: Servers, socket_dir: str, version: str, name: str, options: list[str]
) -> None:
    """An app that starts a non-daemon thread at import (the demo app), dumped
    10 times while both workers are stuck: no crash, no hang, no dead thread shown."""
    binary = need_uwsgi(version)
    if version == "3.13" and name == "osafterfork":
        pytest.skip(
            "uWSGI aborts every worker here, without flask-utd: see the next test"
        )
    server = servers.start(binary, BASE + DEMO + options)
    fire(server.url("/hello"))
    fire(server.url("/hello"))
    report = wait_for(
        lambda: len(workers(r := report_of(server, socket_dir))) == 2 and r
    )
    worker_pids = sorted(w["pid"] for w in workers(report))
    statuses = set()
    for _ in range(10):
        report = report_of(server, socket_dir)
        assert sorted(w["pid"] for w in workers(report)) == worker_pids
        assert_threads_alive(report)
        for process in report["processes"]:
            statuses.add((process["role"], process["status"]))
            assert process["status"] in ("ok", "unsafe"), process
            if process["status"] == "unsafe":
                assert "py-call-uwsgi-fork-hooks = true" in (process["error"] or "")
    if name == "fork-hooks":
        assert statuses == {("master", "ok"), ("worker", "ok")}
        report = wait_for(lambda: both_workers_stuck(server, socket_dir), timeout=30)
    else:
        assert ("master", "unsafe") in statuses
    assert_no_crash(server)


def test_osafterfork_aborts_every_worker_on_python_313_without_flask_utd(
    servers: Servers,
) -> None:
    """A fact about uWSGI 2.0.31, not about flask-utd: with `py-call-osafterfork`
    on Python 3.13, even a bare WSGI app's workers abort right after the fork
    ("_PyRecursiveMutex_Unlock: unlocking a recursive mutex that is not owned"),
    because uWSGI calls PyOS_AfterFork_Child without PyOS_BeforeFork.
    `py-call-uwsgi-fork-hooks` calls both and is safe (see the matrix above)."""
    server = servers.start(
        need_uwsgi("3.13"),
        BASE + ["--module", "tests.apps.bare", "--py-call-osafterfork"],
    )
    wait_for(lambda: "killed by signal 6" in server.log(), timeout=30)
    assert "not owned by the current thread" in server.log()


def test_app_threads_started_in_postfork_keep_running_and_appear(
    servers: Servers, socket_dir: str
) -> None:
    """tests/apps/plain.py registers its own postfork hook (run before ours) that
    starts a thread in each worker; no thread in the master, default settings."""
    server = servers.start(need_uwsgi(), BASE + PLAIN)
    report = wait_for(workers_answering(server, socket_dir))
    for worker in workers(report):
        names = [t["name"] for t in worker["threads"]]
        assert "app-postfork-thread" in names, names
    before = int(get(server.url("/beats")))
    wait_for(lambda: int(get(server.url("/beats"))) > before + 5)
    assert_threads_alive(report)
    master = report["processes"][0]
    assert master["role"] == "master" and master["status"] == "unsafe"


def test_rpyc_settings_in_the_servers_environment_change_nothing(
    servers: Servers, socket_dir: str
) -> None:
    """RPyC reads ``RPYC_BIND_THREADS`` from the environment; the agent pins it
    (before, no dump worked: both clients got EOF)."""
    server = servers.start(
        need_uwsgi(), BASE + DEMO + FORK_HOOKS, env={"RPYC_BIND_THREADS": "true"}
    )
    report = wait_for(workers_answering(server, socket_dir))
    assert [p["status"] for p in report["processes"]] == ["ok"] * 3
    for process in report["processes"]:
        path = sockets.socket_path(socket_dir, str(server.pid), process["pid"])
        conn = connect(path, time.monotonic() + 5)
        try:
            assert json.loads(conn.root.info())["pid"] == process["pid"]
        finally:
            conn.close()


def test_lazy_apps_workers_start_their_agent(servers: Servers, socket_dir: str) -> None:
    server = servers.start(need_uwsgi(), BASE + DEMO + ["--lazy-apps"])
    answering = workers_answering(server, socket_dir)

    def counters_started() -> Report | None:
        # Each worker starts its agent at register_blueprint, while it still
        # imports the app: the app's own thread comes a moment later (a dump
        # taken in between rightly lacks it; CI caught one).
        report = answering()
        if report is None:
            return None
        names = [{t["name"] for t in w["threads"]} for w in workers(report)]
        return report if all("demo-counter" in n for n in names) else None

    report = wait_for(counters_started)
    assert sorted(w["worker_id"] or 0 for w in workers(report)) == [1, 2]
    # The master never loads the app under lazy-apps: it runs no agent.
    assert all(p["role"] == "worker" for p in report["processes"])
    assert_threads_alive(report)


def test_core_threads_appear(servers: Servers, socket_dir: str) -> None:
    server = servers.start(need_uwsgi(), BASE + DEMO + FORK_HOOKS + ["--threads", "2"])
    for _ in range(4):
        fire(server.url("/hello"))

    def four_stuck() -> Report | None:
        report = report_of(server, socket_dir)
        stuck = [t for w in workers(report) for t in stuck_in(w, "hello")]
        return report if len(stuck) == 4 else None

    report = wait_for(four_stuck, timeout=30)
    names = sorted(t["name"] for w in workers(report) for t in stuck_in(w, "hello"))
    assert names == [
        "uWSGIWorker1Core0",
        "uWSGIWorker1Core1",
        "uWSGIWorker2Core0",
        "uWSGIWorker2Core1",
    ]
    assert_threads_alive(report)
