"""The endpoint under a real uWSGI: the app's own port, and the admin listener of
the master, which answers while every worker is stuck."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest
from flask import Flask

from flask_utd.ext.signing import make_token
from tests.helpers import SUPPORTED
from tests.helpers import Servers
from tests.helpers import admin_address
from tests.helpers import report_of
from tests.helpers import signed_path
from tests.helpers import start_demo
from tests.helpers import stick
from tests.helpers import stuck_workers
from tests.helpers import wait_for
from tests.helpers import wait_stuck

pytestmark = pytest.mark.uwsgi


def get(
    url: str, timeout: float = 10, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def listening_inode(port: int) -> str:
    """The inode of the TCP socket listening on 127.0.0.1:``port``."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if local == f"0100007F:{port:04X}" and state == "0A":
                return inode
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[len("socket:[") : -1])
    return found


@pytest.mark.parametrize("version", SUPPORTED)
def test_admin_listener_answers_while_every_worker_is_stuck(
    servers: Servers, socket_dir: str, version: str
) -> None:
    server = start_demo(servers, admin="127.0.0.1:0", version=version)
    address = admin_address(server)
    assert address.startswith("127.0.0.1:")
    stick(server, 2)
    stuck = wait_stuck(server, socket_dir, 2)

    # The app's own port cannot answer: both workers are in /hello.
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url(signed_path()), timeout=1).read()

    started = time.monotonic()
    status, headers, body = get(f"http://{address}{signed_path()}", timeout=5)
    elapsed = time.monotonic() - started
    assert status == 200, body
    assert elapsed < 1.0, f"the admin listener took {elapsed:.2f} s"
    report = json.loads(body)
    assert report["schema"] == "flask-utd/1"
    assert report["instance"] == str(server.pid)
    assert sorted(stuck_workers(report)) == sorted(stuck)
    assert all(p["status"] == "ok" for p in report["processes"])
    (master,) = [p for p in report["processes"] if p["role"] == "master"]
    assert master["pid"] == server.pid
    (admin,) = [t for t in master["threads"] if t["name"] == "utd-admin"]
    assert admin["daemon"] and admin["own"] == "admin"
    (answering,) = [t for t in master["threads"] if t["name"] == "utd-admin-request"]
    assert answering["daemon"]
    # The thread answering only collects; the master's dump is its agent's.
    assert any(f["function"] == "collect" for f in answering["frames"])
    assert answering["own"] == "collector"  # while it collects, then "admin"
    assert not any(f["function"] == "process_report" for f in answering["frames"])

    # The same signature rules, and nothing but /_utd/.
    status, _, body = get(f"http://{address}/_utd/dump?token=forged")
    assert status == 403 and json.loads(body) == {"error": "invalid token"}
    for path in ("/hello", "/", "/_utd/", "/_utd/nothing"):
        assert get(f"http://{address}{path}")[0] == 404, path
    status, headers, body = get(f"http://{address}{signed_path(format='text')}")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"in hello" in body
    # The token stays out of the log.
    assert "token=" not in server.log()


@pytest.mark.parametrize("version", SUPPORTED)
def test_no_worker_inherits_the_admin_listener(
    servers: Servers, socket_dir: str, version: str
) -> None:
    server = start_demo(servers, admin="127.0.0.1:0", version=version)
    port = int(admin_address(server).rsplit(":", 1)[1])
    inode = listening_inode(port)
    assert inode in socket_inodes(server.pid)

    def workers() -> list[int]:
        report = report_of(server, socket_dir)
        return [
            p["pid"]
            for p in report["processes"]
            if p["role"] == "worker" and p["status"] == "ok"
        ]

    first = wait_for(lambda: len(found := workers()) == 2 and found)
    # Keep the admin thread busy, then make the master fork a new worker.
    status, _, _ = get(f"http://127.0.0.1:{port}{signed_path()}")
    assert status == 200
    os.kill(first[0], signal.SIGKILL)
    respawned = wait_for(
        lambda: len(found := workers()) == 2 and first[0] not in found and found
    )
    for pid in set(first[1:]) | set(respawned):
        assert inode not in socket_inodes(pid), f"worker {pid} holds the admin socket"
    report = report_of(server, socket_dir)
    for process in report["processes"]:
        names = {t["name"] for t in process["threads"]}
        assert ("utd-admin" in names) == (process["role"] == "master"), process["pid"]
    assert get(f"http://127.0.0.1:{port}{signed_path()}")[0] == 200


def test_the_masters_listener_holds_with_fifty_idle_clients(
    servers: Servers, socket_dir: str
) -> None:
    """Under uWSGI: fifty connections that send nothing, or half a request,
    and a signed request still gets its answer within a second."""
    server = start_demo(servers, admin="127.0.0.1:0")
    address = admin_address(server)
    wait_for(
        lambda: (
            [p["status"] for p in report_of(server, socket_dir)["processes"]]
            == ["ok"] * 3
        )
    )
    host, port = address.rsplit(":", 1)
    clients = []
    try:
        for i in range(50):
            client = socket.create_connection((host, int(port)), timeout=5)
            if i % 2:
                client.sendall(b"GET /_utd/dump HTTP/1.1\r\nHost: x\r\n")
            clients.append(client)
        started = time.monotonic()
        status, _, body = get(f"http://{address}{signed_path()}", timeout=5)
        elapsed = time.monotonic() - started
    finally:
        for client in clients:
            client.close()
    assert status == 200, body
    assert elapsed < 1.0, f"the admin listener took {elapsed:.2f} s"
    assert len(json.loads(body)["processes"]) == 3


def test_admin_listener_on_a_unix_socket(servers: Servers, socket_dir: str) -> None:
    path = os.path.join(socket_dir, "admin.sock")
    server = start_demo(servers, admin=f"unix:{path}")
    assert admin_address(server) == f"unix:{path}"
    wait_for(
        lambda: (
            sum(
                p["role"] == "worker" and p["status"] == "ok"
                for p in report_of(server, socket_dir)["processes"]
            )
            == 2
        )
    )

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(10)
            self.sock.connect(path)

    conn = UnixConnection("localhost")
    try:
        conn.request("GET", signed_path(), headers={"Accept": "application/json"})
        response = conn.getresponse()
        report = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200
    assert {p["role"] for p in report["processes"]} == {"master", "worker"}


def test_without_fork_hooks_there_is_no_listener_and_the_log_says_why(
    servers: Servers, socket_dir: str
) -> None:
    path = os.path.join(socket_dir, "admin.sock")
    server = start_demo(servers, hooks=False, admin=f"unix:{path}")
    wait_for(lambda: "UTD_ADMIN_LISTEN is set but" in server.log())
    assert "py-call-uwsgi-fork-hooks" in server.log()
    assert not os.path.exists(path)
    assert "admin listener of the uWSGI master" not in server.log()


def test_the_apps_own_port_answers_when_a_worker_is_free(
    servers: Servers, socket_dir: str
) -> None:
    server = start_demo(servers)
    stick(server, 1)
    (stuck,) = wait_stuck(server, socket_dir, 1)
    status, headers, body = get(server.url(signed_path()), Accept="application/json")
    assert status == 200, body
    report = json.loads(body)
    assert stuck_workers(report) == [stuck]
    # The free worker served it: its request thread is the one collecting.
    (free,) = [
        p for p in report["processes"] if p["role"] == "worker" and p["pid"] != stuck
    ]
    assert free["status"] == "ok", free
    assert any(
        any(f["function"] == "collect" for f in t["frames"]) for t in free["threads"]
    )
    status, _, body = get(server.url("/_utd/dump"))
    assert status == 403 and json.loads(body) == {"error": "missing token"}


def test_admin_server_in_this_process_serves_only_utd(app: Flask) -> None:
    """The listener itself, without uWSGI: routes, and what a forked child keeps."""
    import warnings

    from flask_utd.servers.admin import start_admin
    from flask_utd.servers.admin import stop_admin

    token = make_token(app.extensions["utd"].settings.secret_key, 60)

    @app.get("/private")
    def private() -> str:
        return "the app's own route\n"

    listener = start_admin(app, ("127.0.0.1", 0))
    try:
        assert listener.thread.name == "utd-admin" and listener.thread.daemon
        base = f"http://{listener.address}"
        status, _, body = get(f"{base}/_utd/dump?token={token}&format=json")
        assert status == 200 and json.loads(body)["schema"] == "flask-utd/1"
        assert get(f"{base}/private")[0] == 404
        assert get(f"{base}/_utd/dump")[0] == 403

        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() in a process with threads.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                os._exit(0 if listener.server.socket.fileno() == -1 else 1)
        _, status_code = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status_code) == 0, "the child kept the socket"
        assert listener.server.socket.fileno() != -1
    finally:
        stop_admin()
    assert not listener.thread.is_alive()


def connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def test_fifty_slow_or_idle_clients_do_not_hold_up_a_signed_request(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener must answer when nothing else does: idle connections,
    clients that send their request a byte at a time, or one that never reads,
    cost it no thread, and each is cut at its deadline."""
    from flask_utd.servers import admin

    monkeypatch.setattr(admin, "HEAD_TIMEOUT", 3.0, raising=False)
    token = make_token(app.extensions["utd"].settings.secret_key, 60)
    listener = admin.start_admin(app, ("127.0.0.1", 0))
    url = f"http://{listener.address}/_utd/dump?format=json"
    clients: list[socket.socket] = []
    try:
        # Once, to start this process's agent (as any first request does).
        assert get(f"{url}&token={token}")[0] == 200
        for i in range(50):
            client = connect(listener.address)
            if i % 2:  # slowloris: a head that never ends
                client.sendall(b"GET /_utd/dump?token=" + b"x" * i)
            clients.append(client)
        # Complete requests whose clients never read the answer.
        for _ in range(10):
            deaf = connect(listener.address)
            deaf.sendall(b"GET /_utd/dump?token=nope HTTP/1.0\r\n\r\n")
            clients.append(deaf)

        started = time.monotonic()
        status, _, body = get(url, timeout=5, Authorization=f"Bearer {token}")
        elapsed = time.monotonic() - started
        assert status == 200, body
        assert elapsed < 1.0, f"answered in {elapsed:.2f} s"
        assert json.loads(body)["schema"] == "flask-utd/1"

        # Each idle or slow client is cut at HEAD_TIMEOUT, with a 408.
        idle = clients[0]
        idle.settimeout(10)
        assert idle.recv(100).startswith(b"HTTP/1.0 408")
    finally:
        for client in clients:
            client.close()
        admin.stop_admin()


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"POST /_utd/dump HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello", b"400"),
        (b"GET /_utd/dump HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"400"),
        (b"GET /_utd/dump HTTP/1.0\r\nX: " + b"y" * 20000 + b"\r\n\r\n", b"431"),
    ],
    ids=["body", "chunked", "huge-head"],
)
def test_what_the_listener_refuses_before_any_thread_sees_it(
    app: Flask, head: bytes, status: bytes
) -> None:
    from flask_utd.servers import admin

    listener = admin.start_admin(app, ("127.0.0.1", 0))
    try:
        client = connect(listener.address)
        try:
            client.sendall(head)
        except OSError:
            pass  # the listener may close before it has all of a huge head
        answer = client.recv(100)
        client.close()
        assert answer.startswith(b"HTTP/1.0 " + status), answer
    finally:
        admin.stop_admin()
