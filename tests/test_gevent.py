"""gevent: gunicorn's gevent worker and uWSGI's gevent loop, on every supported
Python. Each request stuck in a patched sleep or socket read is a greenlet entry
with its own request; a greenlet that spins without yielding is shown running,
its hub named as blocked, and the dump answers all the same; a thousand idle
connections of the server are counted, not listed. The agent stays a real OS
thread whichever way gevent is patched in: after the fork (gunicorn, uWSGI's
``gevent-monkey-patch``), before the app loads (``gevent-early-monkey-patch``),
or by the app at the top of its module."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from demo_app.server import ROOT
from demo_app.server import GunicornServer
from demo_app.server import UwsgiServer
from flask_utd.core.collector import collect
from flask_utd.core.render import page_context
from flask_utd.core.render import render_text
from flask_utd.core.report import Report
from tests.helpers import SUPPORTED
from tests.helpers import Servers
from tests.helpers import need_uwsgi
from tests.helpers import wait_for

CONF = str(ROOT / "tests" / "apps" / "gunicorn_conf.py")
APP = "tests.apps.green:app"
#: The dump's deadline per process (``UTD_TIMEOUT``'s default).
TIMEOUT = 2.0
#: Requests left stuck in each worker, by path: the wait state of each.
STUCK = {"/sleep?n=1": "sleeping", "/sleep?n=2": "sleeping", "/read": "io-socket"}


def need_gunicorn(version: str) -> str:
    """The gunicorn of the venv whose uWSGI serves ``version``."""
    binary = Path(need_uwsgi(version)).parent / "gunicorn"
    if not binary.exists():
        pytest.skip(f"gunicorn for Python {version} is not installed (make test)")
    return str(binary)


def fire(url: str) -> None:
    """Send a request in the background and forget it (it gets stuck by design)."""

    def run() -> None:
        try:
            urllib.request.urlopen(url, timeout=120).read()
        except OSError:
            pass

    threading.Thread(target=run, daemon=True).start()


def the_worker(report: Report) -> Any:  # a Process, read loosely
    workers = [p for p in report["processes"] if p["role"] == "worker"]
    assert len(workers) == 1, report["processes"]
    return workers[0]


def greenlets(process: Any) -> list[Any]:
    return [t for t in process["threads"] if t.get("kind") == "greenlet"]


def serving(process: Any) -> dict[str, Any]:
    """The greenlet entries that serve a request, by the request's path (and
    the ``n`` of the sleeps, which the report leaves out with the query)."""
    found: dict[str, Any] = {}
    for entry in greenlets(process):
        request = entry["request"]
        if request:
            path = request["path"]
            if path == "/sleep":
                path = f"/sleep?n={sum(1 for p in found if p.startswith('/sleep')) + 1}"
            found[path] = entry
    return found


def all_stuck(server: UwsgiServer, socket_dir: str) -> Report | None:
    report = collect(socket_dir, str(server.pid), timeout=TIMEOUT)
    workers = [p for p in report["processes"] if p["role"] == "worker"]
    if len(workers) != 1 or workers[0]["status"] != "ok":
        return None
    found = serving(workers[0])
    # Settled: every request's greenlet switched out, in its wait. A request
    # that has just arrived may be the greenlet running at the dump, on its
    # thread (its own native id), on its way to the wait.
    if set(found) == set(STUCK) and all(
        found[path]["native_id"] is None and found[path]["wait"] == wait
        for path, wait in STUCK.items()
    ):
        return report
    return None


def check_stuck(report: Report) -> None:
    """Each stuck request is its own greenlet entry, with its request, its wait
    state and its frames, on the worker's main thread (whose hub runs them)."""
    worker = the_worker(report)
    hubs = [t for t in greenlets(worker) if t.get("hub")]
    (main,) = [t for t in worker["threads"] if t["ident"] == hubs[0]["thread_ident"]]
    # The hub runs in the worker's main thread, named as threading names it.
    assert main["kind"] == "thread" and main["native_id"] == worker["pid"]
    assert not main["name"].startswith("<thread")
    found = serving(worker)
    for path, wait in STUCK.items():
        entry = found[path]
        assert entry["kind"] == "greenlet"
        assert entry["thread_ident"] == main["ident"]
        assert entry["native_id"] is None  # switched out: no OS state of its own
        assert entry["wait"] == wait, (path, entry["frames"][-3:])
        assert entry["request"]["method"] == "GET"
        assert entry["request"]["endpoint"] in ("sleep", "read")
        assert entry["request"]["elapsed_s"] >= 0
        functions = [f["function"] for f in entry["frames"]]
        # Outermost first, as for threads: the server, Flask, then the view.
        assert functions.index("full_dispatch_request") < functions.index(
            entry["request"]["endpoint"]
        )
    assert len(hubs) == 1
    # The agent is a real OS thread, named, with its own OS id.
    (agent,) = [t for t in worker["threads"] if t.get("own") == "agent"]
    assert agent["kind"] == "thread" and agent["name"] == "utd-agent"
    assert agent["native_id"] not in (None, worker["pid"])


def check_blocked(server: UwsgiServer, socket_dir: str) -> None:
    """A greenlet spinning on the CPU: shown running, its hub named as blocked
    by it, first in the summary; the dump answers within its deadline."""
    fire(server.url("/spin?seconds=4"))

    def blocked() -> Report | None:
        started = time.monotonic()
        report = collect(socket_dir, str(server.pid), timeout=TIMEOUT, slow_after=0.5)
        assert time.monotonic() - started < TIMEOUT + 1.0
        assert the_worker(report)["status"] == "ok"
        assert {p["status"] for p in report["processes"]} <= {"ok", "unsafe"}
        hubs = report["summary"]["blocked_hubs"]
        return report if hubs else None

    report = wait_for(blocked, timeout=10, interval=0.1)
    worker = the_worker(report)
    spinner = serving(worker)["/spin"]
    assert spinner["running"] is True
    assert spinner["wait"] == "running"
    assert spinner["os_state"] == "R"
    assert spinner["frames"][-1]["function"] == "spin"
    assert spinner["blocking_hub"]["for_s"] >= 1.0
    (hub,) = [t for t in greenlets(worker) if t.get("hub")]
    assert hub["blocked_by"] == spinner["ident"]
    assert "running" not in hub
    (item,) = report["summary"]["blocked_hubs"]
    assert item["greenlet"] == spinner["ident"]
    assert item["request"]["path"] == "/spin"
    assert item["waiting"] >= len(STUCK) + 1  # the stuck requests and the hub
    assert item["app_frame"]["function"] == "spin"
    # Stuck greenlets are stuck requests; the worker's main thread, on which
    # the spinner runs, is not counted again.
    stuck = report["summary"]["stuck_requests"]
    assert {s["kind"] for s in stuck} == {"greenlet"}
    assert sorted(s["path"] for s in stuck) == ["/read", "/sleep", "/sleep", "/spin"]
    text = render_text(report)
    requests = text.index("requests in progress, 4 stuck")
    assert text.index("Blocked hubs") < requests
    assert 'greenlet "' in text[requests:]
    assert "which runs on this thread (below)" in text
    page = page_context(report)
    assert [b["greenlet"] for b in page["blocked_hubs"]] == [spinner["ident"]]
    shown = next(p for p in page["processes"] if p["role"] == "worker")["threads"]
    depths = [(t["kind"], t["depth"]) for t in shown]
    # Every greenlet right under its thread, the blocking one first.
    first = depths.index(("greenlet", 1))
    assert shown[first]["ident"] == spinner["ident"]
    assert all(d == 1 for k, d in depths if k == "greenlet")


def worker_serves(server: UwsgiServer) -> None:
    """Wait until the worker answers a request: it has run its post-fork hooks
    (the agent and the watchdog started, their threads marked) and its gevent
    loop runs.

    The server counts as started once its master listens. A dump taken while
    the worker still starts is not one instant: the OS threads' frames are
    read first, the greenlets after, and between the two the worker's main
    thread may run. Its hub and the requests queued since the master listened
    were then found settled in their waits, while its main thread was not
    listed (it ran C code only, with no Python frame, on its way into the
    loop) or was listed still in the post-fork hook, the agent's thread not
    yet marked as the agent's.
    """
    with urllib.request.urlopen(server.url("/pid"), timeout=30) as response:
        assert int(response.read()) > 0


def stuck_then_blocked(server: UwsgiServer, socket_dir: str) -> None:
    worker_serves(server)
    for path in STUCK:
        fire(server.url(path))
    report = wait_for(lambda: all_stuck(server, socket_dir), timeout=30)
    check_stuck(report)
    check_blocked(server, socket_dir)


@contextmanager
def held_connections(port: int, count: int) -> Iterator[None]:
    """``count`` connections that send nothing: each holds one greenlet of a
    gevent server, waiting for its first request."""
    held = []
    try:
        for _ in range(count):
            held.append(socket.create_connection(("127.0.0.1", port)))
        yield
    finally:
        for sock in held:
            sock.close()


def idle_counted(server: UwsgiServer, socket_dir: str, count: int) -> Any:
    def condition() -> dict[str, Any] | None:
        report = collect(socket_dir, str(server.pid), timeout=TIMEOUT)
        worker = the_worker(report)
        hubs = [t for t in greenlets(worker) if t.get("hub")]
        return worker if hubs and hubs[0]["idle_greenlets"] >= count else None

    return condition


@pytest.mark.parametrize("preload", [False, True], ids=["lazy", "preload"])
@pytest.mark.parametrize("version", SUPPORTED)
def test_gunicorn_gevent_worker(
    servers: Servers, socket_dir: str, version: str, preload: bool
) -> None:
    options = [
        "-c",
        CONF,
        "-k",
        "gevent",
        "-w",
        "1",
        "--graceful-timeout",
        "1",
        "--keep-alive",
        "60",
        "--worker-connections",
        "1200",
        *(["--preload"] if preload else []),
        APP,
    ]
    env = {"UTD_SOCKET_DIR": socket_dir}
    server = servers.launch(GunicornServer, need_gunicorn(version), options, env)
    stuck_then_blocked(server, socket_dir)
    if preload:
        return
    # A thousand idle connections: counted on the hub, not listed one by one.
    assert server.port is not None
    with held_connections(server.port, 1000):
        worker = wait_for(idle_counted(server, socket_dir, 1000), timeout=30)
    assert len(greenlets(worker)) < 20
    hub = next(t for t in greenlets(worker) if t.get("hub"))
    assert hub["idle_greenlets"] == 1000


UWSGI_GEVENT = [
    "--master",
    "--workers",
    "1",
    "--die-on-term",
    "--need-app",
    "--gevent",
    "100",
    "--module",
    APP,
]
#: How gevent gets patched in: uWSGI after the fork, uWSGI before the app
#: loads, or the app itself at the top of its module. uWSGI 2.0.31 crashes at
#: start with both gevent-early-monkey-patch and py-call-uwsgi-fork-hooks (also
#: with a bare WSGI app): the master then runs no agent and answers "unsafe".
PATCHING = {
    "late": (["--gevent-monkey-patch", "--py-call-uwsgi-fork-hooks"], {}),
    "early": (["--gevent-early-monkey-patch"], {}),
    "by-app": (["--py-call-uwsgi-fork-hooks"], {"GREEN_PATCH_AT_IMPORT": "1"}),
}


@pytest.mark.uwsgi
@pytest.mark.parametrize("patching", ["late", "early"])
@pytest.mark.parametrize("version", SUPPORTED)
def test_uwsgi_gevent_loop(
    servers: Servers, socket_dir: str, version: str, patching: str
) -> None:
    options, env = PATCHING[patching]
    server = servers.start(need_uwsgi(version), [*UWSGI_GEVENT, *options], env)
    stuck_then_blocked(server, socket_dir)


@pytest.mark.uwsgi
def test_uwsgi_gevent_app_patches_at_import(servers: Servers, socket_dir: str) -> None:
    options, env = PATCHING["by-app"]
    server = servers.start(need_uwsgi(SUPPORTED[-1]), [*UWSGI_GEVENT, *options], env)
    stuck_then_blocked(server, socket_dir)


def scenario(version: str, *args: str) -> dict[str, Any]:
    python = Path(need_uwsgi(version)).parent / "python"
    done = subprocess.run(
        [str(python), "-m", "tests.apps.green_scenario", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("version", SUPPORTED)
def test_importing_flask_utd_imports_no_gevent(version: str) -> None:
    # gevent is installed there; RPyC would import it for a server class the
    # agent does not use.
    assert scenario(version, "import") == {"gevent": False, "threads": 2}


def test_a_dump_while_gevent_is_half_imported() -> None:
    # uWSGI's gevent-monkey-patch imports gevent.monkey in the worker's main
    # thread while the agent may be answering: the agent once asked it for
    # originals then, found no get_original, and stopped for good.
    result = scenario(SUPPORTED[-1], "half-imported")
    assert result == {"statuses": ["ok", "ok", "ok"]}


@pytest.mark.parametrize("patch", [True, False], ids=["patched", "unpatched"])
def test_a_thousand_greenlets_keep_their_own_requests(patch: bool) -> None:
    result = scenario(SUPPORTED[-1], "thousand", *(["patch"] if patch else []))
    assert result == {
        "greenlets": 1001,  # and the hub
        "requests": 1000,
        "paths": 1000,
        "waits": ["waiting-condition"],
        "on_main_thread": True,
        "hubs": 1,
        "agent_is_os_thread": True,
        "agent_named": True,
        "main_named": True,
    }
    assert sys.modules.get("gevent") is None or "gevent" in sys.modules
