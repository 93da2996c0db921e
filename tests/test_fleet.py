"""The fleet recipe of docs/fleet.rst, as far as one machine allows: three server
instances stand in for three hosts (uWSGI, gunicorn, uWSGI), each with other
stuck requests; ``python -m flask_utd dump --format json`` on each "host", then
``merge``; and ``--format jsonl`` for a log shipper."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from demo_app.server import ROOT
from demo_app.server import GunicornServer
from demo_app.server import UwsgiServer
from tests.helpers import Servers
from tests.helpers import need_uwsgi
from tests.helpers import report_of
from tests.helpers import wait_for

pytestmark = pytest.mark.uwsgi

UWSGI = [
    "--module",
    "tests.apps.plain:app",
    "--master",
    "--workers",
    "2",
    "--die-on-term",
    "--py-call-uwsgi-fork-hooks",
]
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
CONF = str(ROOT / "tests" / "apps" / "gunicorn_conf.py")


def send(server: UwsgiServer, path: str) -> None:
    def run() -> None:
        try:
            urllib.request.urlopen(server.url(path), timeout=120).read()
        except OSError:
            pass  # the server is stopped under it at the test's end

    threading.Thread(target=run, daemon=True).start()


def in_view(server: UwsgiServer, socket_dir: str, function: str) -> list[float]:
    """The ages of the requests of ``server`` whose innermost frame is in
    ``function``."""
    return [
        t["request"]["elapsed_s"]
        for p in report_of(server, socket_dir)["processes"]
        for t in p["threads"]
        if t["request"] and t["frames"] and t["frames"][-1]["function"] == function
    ]


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    out = subprocess.run(
        ["unshare", "--uts", "hostname", "utd-check"], capture_output=True, timeout=10
    )
    return out.returncode == 0


UNSHARE = _can_unshare()


def dump_on(host: str, socket_dir: str, instance: int, *args: str) -> str:
    """``python -m flask_utd dump`` as if on ``host``: in a UTS namespace of its
    own whose host name is ``host`` (as root), else with the report's ``host``
    set afterwards (``--format json``; other formats keep this host's name)."""
    argv = [sys.executable, "-m", "flask_utd", "dump", "--socket-dir", socket_dir,
            "--instance", str(instance), *args]  # fmt: skip
    if UNSHARE:
        argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host,
                *argv]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    if UNSHARE or "json" not in args:
        return out.stdout
    report = json.loads(out.stdout)
    return json.dumps(dict(report, host=host))


def lean(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask_utd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_three_hosts_merged(servers: Servers, socket_dir: str, tmp_path: Path) -> None:
    binary = need_uwsgi()
    env = {"DEMO_SECRET_KEY": "fleet", "DEMO_HELLO_SECONDS": "120"}
    a = servers.start(binary, UWSGI, env=env)
    b = servers.launch(
        GunicornServer,
        GUNICORN,
        ["-c", CONF, "-w", "2", "--timeout", "120", "tests.apps.plain:app"],
        {**env, "UTD_SOCKET_DIR": socket_dir},
    )
    c = servers.start(binary, UWSGI, env=env)
    # pod-b (gunicorn): one request in /pid, the oldest by at least 2 s; pod-a
    # and pod-c (uWSGI, the same stack): both workers, and one, in /hello.
    send(b, "/pid?sleep=120")
    wait_for(lambda: any(age >= 2.0 for age in in_view(b, socket_dir, "get_pid")))
    send(a, "/hello")
    send(a, "/hello")
    send(c, "/hello")
    wait_for(
        lambda: [age >= 1.0 for age in in_view(a, socket_dir, "hello")] == [True] * 2
    )
    wait_for(lambda: [age >= 1.0 for age in in_view(c, socket_dir, "hello")] == [True])

    paths = []
    for host, server in (("pod-a", a), ("pod-b", b), ("pod-c", c)):
        path = tmp_path / f"{host}.json"
        path.write_text(dump_on(host, socket_dir, server.pid, "--format", "json"))
        paths.append(str(path))
    out = lean("merge", *paths, "--format", "json", "--slow-after", "0.5")
    assert out.returncode == 0, out.stderr
    merged = json.loads(out.stdout)

    assert merged["schema"] == "flask-utd/1"
    assert [(s["host"], s["instance"]) for s in merged["merged_from"]] == [
        ("pod-a", str(a.pid)),
        ("pod-b", str(b.pid)),
        ("pod-c", str(c.pid)),
    ]
    roles = sorted((p["host"], p["role"]) for p in merged["processes"])
    assert roles == sorted(
        (h, r)
        for h in ("pod-a", "pod-b", "pod-c")
        for r in ("master", "worker", "worker")
    )
    assert all(p["status"] == "ok" for p in merged["processes"])
    # Stuck requests of every host, oldest first: pod-b's first.
    stuck = merged["summary"]["stuck_requests"]
    assert [(s["host"], s["path"]) for s in stuck][0] == ("pod-b", "/pid")
    assert sorted((s["host"], s["path"]) for s in stuck) == [
        ("pod-a", "/hello"),
        ("pod-a", "/hello"),
        ("pod-b", "/pid"),
        ("pod-c", "/hello"),
    ]
    ages = [s["elapsed_s"] for s in stuck]
    assert ages == sorted(ages, reverse=True)
    # The same stack in three workers on two hosts.
    (hello,) = [
        g for g in merged["summary"]["stack_groups"]
        if g["app_frame"] and g["app_frame"]["function"] == "hello"
    ]  # fmt: skip
    assert (hello["count"], hello["processes"], hello["hosts"]) == (3, 3, 2)

    text = lean("merge", *paths, "--slow-after", "0.5").stdout
    assert text.startswith("flask-utd thread dump merged from 3 reports at ")
    assert "3 threads in 3 workers on 2 hosts: sleeping (time.sleep) at " in text
    first = text.split("oldest first:\n")[1].splitlines()[0]
    assert (
        "GET /pid (get_pid) in worker" in first
        and f"on pod-b, instance {b.pid}" in first
    )
    html = lean("merge", *paths, "--format", "html").stdout
    assert "<h1>Thread dump merged from 3 reports</h1>" in html
    assert f"on pod-c, instance {c.pid}</td>" in html

    # The recipe's pipe: every report on standard input, one after another.
    piped = lean("merge", "-", "--format", "json",
                 stdin="".join(Path(p).read_text() for p in paths))  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert len(json.loads(piped.stdout)["processes"]) == 9

    # JSON Lines for a log shipper: from one host's dump, and from the merge.
    lines = dump_on("pod-c", socket_dir, c.pid, "--format", "jsonl")
    records = [json.loads(line) for line in lines.splitlines()]
    assert {r["host.name"] for r in records} == {
        "pod-c" if UNSHARE else socket.gethostname()
    }
    assert {r["flask_utd.instance"] for r in records} == {str(c.pid)}
    assert {r["flask_utd.role"] for r in records} == {"master", "worker"}
    (request,) = [r for r in records if r.get("url.path") == "/hello"]
    assert request["flask_utd.worker_id"] in (1, 2)
    assert request["code.function"] == "hello"
    assert request["http.request.method"] == "GET"
    out = lean("merge", *paths, "--format", "jsonl", "--slow-after", "0.5")
    records = [json.loads(line) for line in out.stdout.splitlines()]
    requests = [r for r in records if "url.path" in r]
    assert sorted((r["host.name"], r["url.path"]) for r in requests) == [
        ("pod-a", "/hello"),
        ("pod-a", "/hello"),
        ("pod-b", "/pid"),
        ("pod-c", "/hello"),
    ]
    assert all(r["flask_utd.stuck"] for r in requests)
    assert {r["process.pid"] for r in records} >= {a.pid, b.pid, c.pid}
