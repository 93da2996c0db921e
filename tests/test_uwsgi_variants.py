"""uWSGI variants and lifecycle events: after each, the next dump is complete and
the socket directory holds exactly one socket per live process."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.error
from pathlib import Path

import pytest

from demo_app.server import UwsgiServer
from demo_app.server import children
from flask_utd.core import sockets
from flask_utd.core.errors import EXIT_USAGE
from flask_utd.core.report import Report
from flask_utd.core.report import Status
from tests.helpers import DEMO_SECRET
from tests.helpers import SUPPORTED
from tests.helpers import DaemonizedUwsgi
from tests.helpers import Servers
from tests.helpers import lean_dump
from tests.helpers import need_uwsgi
from tests.helpers import report_of
from tests.helpers import signed_path
from tests.helpers import unix_get
from tests.helpers import wait_for
from tests.lifecycle import get
from tests.lifecycle import layout
from tests.lifecycle import no_crash as check_log

pytestmark = pytest.mark.uwsgi

PLAIN = ["--module", "tests.apps.plain:app", "--master", "--die-on-term"]
HOOKS = "--py-call-uwsgi-fork-hooks"


def start(servers: Servers, *options: str, workers: int = 2, **env: str) -> UwsgiServer:
    return servers.start(
        need_uwsgi(), [*PLAIN, "--workers", str(workers), *options], env
    )


def statuses(
    server: UwsgiServer, socket_dir: str
) -> dict[tuple[str, int | None], Status]:
    """``{(role, worker_id): status}`` of a fresh report."""
    report = report_of(server, socket_dir, timeout=5)
    result = {(p["role"], p["worker_id"]): p["status"] for p in report["processes"]}
    assert len(result) == len(report["processes"]), report
    return result


def complete(server: UwsgiServer, socket_dir: str, workers: int = 2) -> Report:
    """A fresh report in which the master and every worker answered ``ok``."""
    report = report_of(server, socket_dir, timeout=5)
    assert all(p["status"] == "ok" for p in report["processes"]), report
    pids = {p["pid"] for p in report["processes"]}
    assert pids == children(server.pid) | {server.pid}
    assert sorted(
        p["worker_id"] or 0 for p in report["processes"] if p["role"] == "worker"
    ) == list(range(1, workers + 1))
    return report


def no_crash(server: UwsgiServer, killed: int = 0) -> None:
    check_log(server.log(), killed)


def test_lazy_apps(servers: Servers, socket_dir: str) -> None:
    # The master loads no app: it runs no Python of ours and has no entry.
    server = start(servers, "--lazy-apps", HOOKS)

    def directory_has_workers_only() -> bool:
        return layout(socket_dir, server.pid, count=2, master_runs="nothing")

    wait_for(directory_has_workers_only)
    assert statuses(server, socket_dir) == {("worker", 1): "ok", ("worker", 2): "ok"}
    # A respawn under lazy-apps: the new worker loads the app and starts its agent.
    victim = next(iter(children(server.pid)))
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: victim not in children(server.pid) and directory_has_workers_only()
    )
    assert statuses(server, socket_dir) == {("worker", 1): "ok", ("worker", 2): "ok"}
    no_crash(server, killed=1)


def test_threads(servers: Servers, socket_dir: str) -> None:
    server = start(servers, "--threads", "4", HOOKS)
    wait_for(lambda: layout(socket_dir, server.pid, count=2))

    def call() -> None:
        try:
            get(server.url("/hello"), timeout=2)
        except OSError:
            pass  # it sleeps 60 s: only its presence in the dump matters

    caller = threading.Thread(target=call, daemon=True)
    caller.start()

    def serving() -> bool:
        report = complete(server, socket_dir)
        return any(
            f["function"] == "hello"
            for p in report["processes"]
            for t in p["threads"]
            for f in t["frames"]
        )

    wait_for(serving)
    no_crash(server)


def test_mules_and_spooler_have_their_own_role(
    servers: Servers, socket_dir: str
) -> None:
    # Without py-call-uwsgi-fork-hooks (with it, uWSGI 2.0.31 mules segfault in
    # uwsgi_python_post_fork even with an app that does nothing; see docs).
    os.makedirs(f"{socket_dir}/spool")
    server = start(servers, "--mule", "--spooler", f"{socket_dir}/spool")
    wait_for(lambda: layout(socket_dir, server.pid, count=4, master_runs="note"))
    assert statuses(server, socket_dir) == {
        ("master", None): "unsafe",
        ("worker", 1): "ok",
        ("worker", 2): "ok",
        ("mule", 1): "ok",
        ("spooler", None): "ok",
    }
    no_crash(server)


def test_max_requests_respawns(servers: Servers, socket_dir: str) -> None:
    # uWSGI 2.0.31 reloads no worker younger than min-worker-lifetime (10 s).
    server = start(servers, "--max-requests", "3", "--min-worker-lifetime", "1", HOOKS)
    wait_for(lambda: layout(socket_dir, server.pid, count=2))
    first = children(server.pid)

    def respawned() -> bool:
        get(server.url("/pid"))
        return not (children(server.pid) & first) and layout(
            socket_dir, server.pid, count=2
        )

    wait_for(respawned, interval=0.1)
    complete(server, socket_dir)
    no_crash(server)


def test_harakiri(servers: Servers, socket_dir: str) -> None:
    server = start(servers, "--harakiri", "1", HOOKS)
    wait_for(lambda: layout(socket_dir, server.pid, count=2))
    first = children(server.pid)
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        get(server.url("/hello"), timeout=15)
    wait_for(lambda: "HARAKIRI" in server.log())
    wait_for(
        lambda: (
            len(children(server.pid) & first) == 1
            and layout(socket_dir, server.pid, count=2)
        )
    )
    complete(server, socket_dir)
    no_crash(server, killed=1)


def test_graceful_reload_keeps_the_master(servers: Servers, socket_dir: str) -> None:
    server = start(servers, HOOKS)
    wait_for(lambda: layout(socket_dir, server.pid, count=2))
    first = children(server.pid)
    os.kill(server.pid, signal.SIGHUP)
    wait_for(
        lambda: (
            not (children(server.pid) & first)
            and layout(socket_dir, server.pid, count=2)
        )
    )
    wait_for(lambda: server.log().count("spawned uWSGI worker 1") == 2)
    complete(server, socket_dir)
    no_crash(server)


def test_reload_on_rss(servers: Servers, socket_dir: str) -> None:
    # Every worker is over 1 MB: each reloads after every request.
    server = start(servers, "--reload-on-rss", "1", "--min-worker-lifetime", "1", HOOKS)
    wait_for(lambda: layout(socket_dir, server.pid, count=2))
    first = children(server.pid)

    def respawned() -> bool:
        get(server.url("/pid"))
        return bool(children(server.pid) - first)

    wait_for(respawned, interval=0.1)
    # Then, with no request to reload a worker again, the files settle: checked
    # apart, since a check right after a request races the worker it reloads.
    wait_for(lambda: layout(socket_dir, server.pid, count=2))
    # The only reason to reload here is the RSS (uWSGI does not log the reason).
    assert "is done. Seeya!" in server.log()
    complete(server, socket_dir)
    no_crash(server)


@pytest.mark.parametrize(
    ("module", "options", "master", "workers"),
    [
        ("tests.apps.plain:app", [HOOKS], "ok", "ok"),
        ("tests.apps.plain:app", [], "unsafe", "ok"),
        ("demo_app.app:app", [HOOKS], "ok", "ok"),
        ("demo_app.app:app", ["--py-call-osafterfork"], "unsafe", "ok"),
        ("demo_app.app:app", [], "unsafe", "unsafe"),
    ],
    ids=[
        "plain-hooks",
        "plain-none",
        "thread-hooks",
        "thread-osafterfork",
        "thread-none",
    ],
)
def test_fork_options(
    servers: Servers,
    socket_dir: str,
    module: str,
    options: list[str],
    master: str,
    workers: str,
) -> None:
    server = servers.start(
        need_uwsgi(),
        ["--module", module, "--master", "--die-on-term", "--workers", "2", *options],
    )
    wait_for(
        lambda: layout(
            socket_dir,
            server.pid,
            count=2,
            master_runs="agent" if master == "ok" else "note",
            faulthandler=workers == "ok",
        )
    )
    assert statuses(server, socket_dir) == {
        ("master", None): master,
        ("worker", 1): workers,
        ("worker", 2): workers,
    }
    no_crash(server)


@pytest.mark.parametrize("version", SUPPORTED)
@pytest.mark.parametrize(
    ("module", "master"),
    [("tests.apps.plain:app", "ok"), ("demo_app.app:app", "unsafe")],
    ids=["plain", "thread-at-import"],
)
def test_daemonize2_keeps_the_master_and_its_admin_listener(
    servers: Servers, socket_dir: str, module: str, master: str, version: str
) -> None:
    """uWSGI loads the app, then forks to daemonize: the master goes on in the
    child, under a new pid, without the threads of the process that loaded the
    app. The master's agent and admin listener start there, and nothing is left
    under the old pid. With a thread started at import (the demo app), that
    thread is gone from the master and its state is left behind: the master
    is listed, unsafe, and says why and what to do."""
    path = os.path.join(socket_dir, "admin.sock")
    options = ["--module", module, "--master", "--die-on-term", "--workers", "2"]
    server = servers.launch(
        DaemonizedUwsgi,
        need_uwsgi(version),
        [*options, HOOKS],
        {"DEMO_SECRET_KEY": DEMO_SECRET, "DEMO_UTD_ADMIN_LISTEN": f"unix:{path}"},
    )
    assert server.proc is not None and server.pid != server.proc.pid
    wait_for(
        lambda: layout(
            socket_dir,
            server.pid,
            count=2,
            master_runs="agent" if master == "ok" else "unsafe-agent",
        )
    )
    assert sockets.list_instances(socket_dir) == [str(server.pid)]
    assert sorted(os.listdir(socket_dir)) == sorted([str(server.pid), "admin.sock"])
    assert statuses(server, socket_dir) == {
        ("master", None): master,
        ("worker", 1): "ok",
        ("worker", 2): "ok",
    }
    if master == "unsafe":
        error = report_of(server, socket_dir)["processes"][0]["error"] or ""
        assert "daemonize2" in error and "'demo-counter'" in error, error

    wait_for(
        lambda: f"admin listener of the uWSGI master (pid {server.pid})" in server.log()
    )
    status, body = unix_get(path, signed_path(format="json"))
    assert status == 200, body
    report = json.loads(body)
    assert [p["pid"] for p in report["processes"]][0] == server.pid
    no_crash(server)


def test_daemonize2_without_fork_hooks_still_lists_the_master(
    servers: Servers, socket_dir: str
) -> None:
    """Without py-call-uwsgi-fork-hooks no Python code runs in the daemonized
    master: its workers leave its note, under its new pid."""
    server = servers.launch(
        DaemonizedUwsgi,
        need_uwsgi(),
        [*PLAIN, "--workers", "2"],
        {"DEMO_SECRET_KEY": DEMO_SECRET},
    )
    wait_for(lambda: layout(socket_dir, server.pid, count=2, master_runs="note"))
    assert sorted(os.listdir(socket_dir)) == [str(server.pid)]
    (entry,) = [
        p for p in report_of(server, socket_dir)["processes"] if p["role"] == "master"
    ]
    assert (entry["pid"], entry["status"]) == (server.pid, "unsafe")
    assert "py-call-uwsgi-fork-hooks" in (entry["error"] or "")
    no_crash(server)


def test_what_the_master_leaves_at_sigterm_goes_at_the_next_start_or_dump(
    servers: Servers, socket_dir: str
) -> None:
    """uWSGI's master runs no Python code when it exits (no atexit, no hook):
    its socket, faulthandler file and watchdog inbox stay. The next server to
    start in the same socket directory removes them, and so does a dump."""
    first = start(servers, HOOKS)
    wait_for(lambda: layout(socket_dir, first.pid, count=2))
    first.stop()
    left = sockets.instance_dir(socket_dir, str(first.pid))
    assert sorted(os.listdir(left)) == [
        f"{first.pid}.fh",
        f"{first.pid}.sock",
        f"{first.pid}.watchdog",
    ]

    second = start(servers, HOOKS)
    wait_for(lambda: layout(socket_dir, second.pid, count=2))
    assert os.listdir(socket_dir) == [str(second.pid)]

    second.stop()
    done = lean_dump(socket_dir)
    assert done.returncode == EXIT_USAGE and "no running server" in done.stderr
    assert os.listdir(socket_dir) == []


@pytest.mark.parametrize("how", ["sighup", "chain-fifo", "chain-touch"])
def test_after_a_reload_the_listener_and_every_agent_are_back(
    servers: Servers, socket_dir: str, tmp_path: Path, how: str
) -> None:
    """A graceful reload (SIGHUP: the master execs itself, same pid) and a chain
    reload (the master replaces its workers one by one, through its FIFO or a
    touched file), with the admin listener on and idle clients connected to it:
    it answers after, every process answers, and the socket directory holds
    nothing stale."""
    path = os.path.join(socket_dir, "admin.sock")
    fifo = tmp_path / "fifo"
    touched = tmp_path / "reload"
    touched.touch()
    options = ["--module", "demo_app.app:app", "--master", "--die-on-term"]
    server = servers.start(
        need_uwsgi(),
        [*options, "--workers", "2", HOOKS, "--master-fifo", str(fifo)]
        + ["--touch-chain-reload", str(touched)],
        {"DEMO_SECRET_KEY": DEMO_SECRET, "DEMO_UTD_ADMIN_LISTEN": f"unix:{path}"},
    )
    bound = f"admin listener of the uWSGI master (pid {server.pid}) bound to"
    wait_for(lambda: layout(socket_dir, server.pid, count=2) and bound in server.log())
    first = children(server.pid)
    # Clients that connected and said nothing yet (a monitoring probe, a port
    # scan) are there during the reload and after it.
    idle = []
    for _ in range(5):
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        idle.append(client)
    if how == "sighup":
        os.kill(server.pid, signal.SIGHUP)
    elif how == "chain-fifo":
        fifo.write_text("c")
    else:
        later = time.time() + 10  # uWSGI compares whole seconds
        os.utime(touched, (later, later))
    wait_for(
        lambda: (
            not (children(server.pid) & first)
            and layout(socket_dir, server.pid, count=2)
        ),
        timeout=60,
    )
    # A graceful reload starts a new listener; a chain reload keeps the master's.
    assert server.log().count(bound) == (2 if how == "sighup" else 1)
    report = complete(server, socket_dir)
    status, body = unix_get(path, signed_path(format="json"))
    assert status == 200, body
    served = json.loads(body)
    assert [p["status"] for p in served["processes"]] == ["ok"] * 3
    assert {p["pid"] for p in served["processes"]} == {
        p["pid"] for p in report["processes"]
    }
    assert sorted(os.listdir(socket_dir)) == sorted([str(server.pid), "admin.sock"])
    for client in idle:
        client.close()
    no_crash(server)
