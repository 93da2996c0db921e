"""gunicorn, sync and gthread workers, with and without --preload: the arbiter is
the master, every worker answers, and the socket directory follows the workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from demo_app.server import ROOT
from demo_app.server import children
from flask_utd.core import fallback as faultdump
from flask_utd.core import sockets
from flask_utd.core.collector import collect
from flask_utd.core.errors import EXIT_PARTIAL
from flask_utd.core.report import Report
from tests.helpers import Gunicorns
from tests.helpers import lean_dump
from tests.helpers import unix_get
from tests.helpers import wait_for
from tests.lifecycle import files_by_kind

FLASK = str(Path(sys.executable).parent / "flask")


def one_socket_per_live_process(socket_dir: str, master: int, count: int) -> bool:
    """Exactly one socket (and one faulthandler file) per live process, the
    arbiter's watchdog inbox, no other file, and ``count`` processes."""
    live = {master} | children(master)
    files = files_by_kind(socket_dir, master)
    return (
        len(live) == count
        and files.get(sockets.SOCKET_SUFFIX) == live
        and files.get(faultdump.FH_SUFFIX) == live
        and files.get(sockets.WATCHDOG_SUFFIX) == {master}
        and set(files)
        == {sockets.SOCKET_SUFFIX, faultdump.FH_SUFFIX, sockets.WATCHDOG_SUFFIX}
    )


def complete_report(
    socket_dir: str, master: int, workers: int, ids: list[int] | None = None
) -> Report:
    report = collect(socket_dir, str(master), timeout=5)
    processes = report["processes"]
    assert [p["status"] for p in processes] == ["ok"] * (workers + 1), processes
    assert processes[0]["role"] == "master" and processes[0]["pid"] == master
    assert processes[0]["worker_id"] is None
    assert {p["role"] for p in processes[1:]} == {"worker"}
    worker_ids = sorted(p["worker_id"] or 0 for p in processes[1:])
    assert worker_ids == (ids or list(range(1, workers + 1)))
    assert {p["pid"] for p in processes[1:]} == children(master)
    return report


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


@pytest.mark.parametrize("preload", [False, True], ids=["lazy", "preload"])
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_every_process_answers_through_respawn_and_reload(
    gunicorns: Gunicorns, socket_dir: str, worker_class: str, preload: bool
) -> None:
    options = ["-w", "2", "-k", worker_class, "--graceful-timeout", "5"]
    if worker_class == "gthread":
        options += ["--threads", "2"]
    if preload:
        options.append("--preload")
    server = gunicorns.start([*options, "tests.apps.plain:app"])
    master = server.pid
    wait_for(lambda: one_socket_per_live_process(socket_dir, master, 3))
    report = complete_report(socket_dir, master, 2)
    assert int(get(server.url("/pid"))) in children(master)

    # A worker killed with SIGKILL runs no atexit: the arbiter's child_exit (or
    # the next worker's sweep) removes its socket; its id goes to the new worker.
    victim = next(p for p in report["processes"] if p["worker_id"] == 1)
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(
        lambda: (
            victim["pid"] not in children(master)
            and one_socket_per_live_process(socket_dir, master, 3)
        )
    )
    report = complete_report(socket_dir, master, 2)
    assert victim["pid"] not in {p["pid"] for p in report["processes"]}

    # A graceful reload (SIGHUP): same arbiter, new workers. gunicorn starts the
    # new ones before it stops the old ones, so they take the next free ids.
    before = children(master)
    os.kill(master, signal.SIGHUP)
    wait_for(
        lambda: (
            not (children(master) & before)
            and one_socket_per_live_process(socket_dir, master, 3)
        )
    )
    complete_report(socket_dir, master, 2, ids=[3, 4])

    # At shutdown everything is removed, the instance directory included.
    server.stop()
    assert server.proc is not None and server.proc.returncode == 0, server.log()
    wait_for(
        lambda: not os.path.exists(sockets.instance_dir(socket_dir, str(master))),
        timeout=5,
    )


@pytest.mark.parametrize("preload", [False, True], ids=["lazy", "preload"])
def test_arbiter_admin_listener_answers_while_every_worker_is_stuck(
    gunicorns: Gunicorns, socket_dir: str, preload: bool
) -> None:
    """UTD_ADMIN_LISTEN from the environment: the arbiter serves the dump URL
    from a thread of its own, with or without the app loaded there."""
    import http.client
    import json
    import socket
    import threading
    import time

    from flask_utd.ext.signing import make_token

    path = os.path.join(socket_dir, "admin.sock")
    env = {
        "UTD_ADMIN_LISTEN": f"unix:{path}",
        "UTD_SECRET_KEY": "admin-secret",
        "DEMO_UTD_SECRET_KEY": "admin-secret",
        "DEMO_UTD_ADMIN_LISTEN": f"unix:{path}",
        "DEMO_HELLO_SECONDS": "60",
    }
    options = ["-w", "2", "--timeout", "120"] + (["--preload"] if preload else [])
    server = gunicorns.start([*options, "tests.apps.plain:app"], env=env)
    master = server.pid
    wait_for(lambda: one_socket_per_live_process(socket_dir, master, 3))

    def hello() -> None:
        try:
            urllib.request.urlopen(server.url("/hello"), timeout=120).read()
        except OSError:
            pass

    for _ in range(2):
        threading.Thread(target=hello, daemon=True).start()

    def both_stuck() -> bool:
        report = collect(socket_dir, str(master), timeout=2)
        return (
            sum(
                any(
                    t["frames"] and t["frames"][-1]["function"] == "hello"
                    for t in p["threads"]
                )
                for p in report["processes"]
                if p["role"] == "worker"
            )
            == 2
        )

    wait_for(both_stuck, timeout=30)

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(1.0)
            self.sock.connect(path)

    conn = UnixConnection("localhost")
    started = time.monotonic()
    try:
        token = make_token("admin-secret", 60)
        conn.request(
            "GET", f"/_utd/dump?token={token}", headers={"Accept": "application/json"}
        )
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert time.monotonic() - started < 1.0 + 0.5  # the socket's 1 s, plus slack
    assert response.status == 200, body
    report = json.loads(body)
    roles = sorted(p["role"] for p in report["processes"])
    assert roles == ["master", "worker", "worker"]
    for p in report["processes"]:
        if p["role"] == "worker":
            assert any(
                t["frames"] and t["frames"][-1]["function"] == "hello"
                for t in p["threads"]
            ), p
    master_threads = [t["name"] for t in report["processes"][0]["threads"]]
    assert "utd-admin" in master_threads
    # A bad token is refused there too.
    conn = UnixConnection("localhost")
    try:
        conn.request("GET", "/_utd/dump?token=nope")
        assert conn.getresponse().status == 403
    finally:
        conn.close()


def flask_utd_url(env: dict[str, str]) -> str:
    """The token of ``flask utd url``, run as a user would beside the server:
    the app's CLI, in the server's environment."""
    done = subprocess.run(
        [FLASK, "--app", "tests.apps.plain:app", "utd", "url"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )
    assert done.returncode == 0, done.stderr
    match = re.search(r"token=([\w.-]+)", done.stdout)
    assert match, done.stdout
    return match.group(1)


def test_arbiter_set_up_as_the_docs_say_accepts_the_apps_urls(
    gunicorns: Gunicorns, socket_dir: str
) -> None:
    """docs/gunicorn.rst: no --preload, UTD_ADMIN_LISTEN and UTD_SECRET_KEY in
    the environment. The app has a SECRET_KEY of its own; it reads
    UTD_SECRET_KEY from the environment as the arbiter does, so the URLs that
    `flask utd url` makes are the arbiter's."""
    path = os.path.join(socket_dir, "admin.sock")
    env = {"UTD_ADMIN_LISTEN": f"unix:{path}", "UTD_SECRET_KEY": "from-the-env"}
    server = gunicorns.start(["-w", "2", "tests.apps.plain:app"], env=env)
    wait_for(lambda: one_socket_per_live_process(socket_dir, server.pid, 3))
    wait_for(lambda: os.path.exists(path))
    token = flask_utd_url({**env, "UTD_SOCKET_DIR": socket_dir})
    status, body = unix_get(path, f"/_utd/dump?token={token}&format=json")
    assert status == 200, body
    report = json.loads(body)
    assert sorted(p["role"] for p in report["processes"]) == [
        "master",
        "worker",
        "worker",
    ]
    # The app's workers check the same key on the app's own port.
    assert get(server.url(f"/_utd/dump?token={token}&format=json")).startswith("{")
    assert "flask-utd: " not in server.log().replace("flask-utd: admin listener", "")


@pytest.mark.parametrize(
    ("env", "warning"),
    [
        # UTD_ADMIN_LISTEN in the app's config only: the arbiter never sees it.
        (
            {"DEMO_UTD_ADMIN_LISTEN": "unix:{path}"},
            "UTD_ADMIN_LISTEN=unix:{path} is set in the app's config, but",
        ),
        # The arbiter serves it, but the app signs with a key of its own.
        (
            {
                "UTD_ADMIN_LISTEN": "unix:{path}",
                "UTD_SECRET_KEY": "arbiter",
                "DEMO_UTD_SECRET_KEY": "app",
            },
            "the app signs dump URLs with another key than gunicorn's arbiter",
        ),
    ],
    ids=["listen-in-app-config", "another-key"],
)
def test_a_setting_the_arbiter_cannot_honour_is_one_warning(
    gunicorns: Gunicorns, socket_dir: str, env: dict[str, str], warning: str
) -> None:
    path = os.path.join(socket_dir, "admin.sock")
    env = {k: v.format(path=path) for k, v in env.items()}
    server = gunicorns.start(["-w", "2", "tests.apps.plain:app"], env=env)
    wait_for(lambda: one_socket_per_live_process(socket_dir, server.pid, 3))
    expected = warning.format(path=path)
    wait_for(lambda: expected in server.log())
    assert (
        server.log().count("flask-utd: ")
        - server.log().count("flask-utd: admin listener")
        == 1
    ), server.log()
    assert "docs/gunicorn.rst" in server.log()


@pytest.mark.parametrize("preload", [False, True], ids=["lazy", "preload"])
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_without_the_hooks_the_workers_are_one_instance(
    gunicorns: Gunicorns, socket_dir: str, preload: bool, worker_class: str
) -> None:
    """Only `app.register_blueprint(utd_bp)`, no gunicorn.conf.py: each worker
    knows its arbiter, so `dump` gives one report of all of them, and the
    arbiter's place in it says what the hooks would add."""
    options = ["-w", "3", "-k", worker_class, "--timeout", "60"]
    options.append("tests.apps.plain:app")
    server = gunicorns.start(options + (["--preload"] if preload else []), hooks=False)
    master = server.pid

    def workers_with_agents() -> bool:
        if preload:
            # Each worker starts its agent at its first request: keep three
            # requests in flight until every worker has served one.
            threads = [
                threading.Thread(target=get, args=(server.url("/pid?sleep=0.3"),))
                for _ in range(3)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        files = files_by_kind(socket_dir, master)
        return files.get(sockets.SOCKET_SUFFIX) == children(master)

    wait_for(workers_with_agents, timeout=30)
    done = lean_dump(socket_dir, "--format", "json")
    assert done.returncode == EXIT_PARTIAL, done.stderr  # the arbiter: unsafe
    report = json.loads(done.stdout)
    assert report["instance"] == str(master)
    arbiter, *workers = report["processes"]
    assert (arbiter["pid"], arbiter["role"], arbiter["status"]) == (
        master,
        "master",
        "unsafe",
    )
    for what in ("hooks", "stack of the arbiter", "worker ids", "admin listener"):
        assert what in arbiter["error"], arbiter["error"]
    assert {p["pid"] for p in workers} == children(master)
    assert all(p["role"] == "worker" and p["status"] == "ok" for p in workers)
    text = lean_dump(socket_dir, "--format", "text").stdout
    assert "gunicorn runs without flask-utd's hooks" in text
    # Said once in the server's log, by the first worker.
    assert server.log().count("gunicorn runs without flask-utd's hooks") == 1
