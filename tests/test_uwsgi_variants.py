"""uWSGI variants and lifecycle events: after each, the next dump is complete and
the socket directory holds exactly one socket per live process."""

from __future__ import annotations

import os
import signal
import threading
import urllib.error

import pytest

from demo_app.server import UwsgiServer
from demo_app.server import children
from flask_utd.core.report import Report
from flask_utd.core.report import Status
from tests.helpers import Servers
from tests.helpers import need_uwsgi
from tests.helpers import report_of
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
