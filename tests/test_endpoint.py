"""``GET /_utd/dump`` in this process: tokens, formats, escaping, concurrency, and
``flask utd url``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask.testing import FlaskCliRunner

from demo_app.server import ROOT
from flask_utd import utd_bp
from flask_utd.core.formats import FORMATS
from flask_utd.core.report import Frame
from flask_utd.core.report import Report
from flask_utd.core.report import Request
from flask_utd.core.sockets import ensure_private_dir
from flask_utd.core.sockets import instance_dir
from flask_utd.ext.signing import make_token
from tests.helpers import MAX_AGE
from tests.helpers import bad_tokens
from tests.helpers import wait_for

SECRET = "test-secret"  # the app fixture's SECRET_KEY
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


class Listening:
    """A socket in the instance directory where an agent's would be: it shows
    whether a collection started (the collector connects to it) and, never
    answering, keeps a collection busy until its deadline."""

    def __init__(self, socket_dir: str) -> None:
        directory = instance_dir(socket_dir, str(os.getpid()))
        ensure_private_dir(socket_dir)
        ensure_private_dir(directory)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(os.path.join(directory, "900009.sock"))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.accepted: list[socket.socket] = []

    def connections(self) -> int:
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return len(self.accepted)
            self.accepted.append(conn)

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def listening(socket_dir: str, client: FlaskClient) -> Iterator[Listening]:
    # This process's agent starts at its first request and sweeps the files of
    # dead pids from the directory: start it before the probe is made.
    client.get("/")
    probe = Listening(socket_dir)
    yield probe
    probe.close()


def dump_url(token: str | None, **args: str) -> str:
    query = {"token": token, **args} if token is not None else args
    return "/_utd/dump?" + "&".join(f"{k}={v}" for k, v in query.items())


@pytest.mark.parametrize(("case", "token", "reason"), bad_tokens())
def test_bad_tokens_get_403_and_no_collection(
    app: Flask,
    client: FlaskClient,
    listening: Listening,
    case: str,
    token: str | None,
    reason: str,
) -> None:
    assert app.config["UTD_URL_MAX_AGE"] == MAX_AGE
    for accept in ("application/json", "*/*", None):
        headers = {"Accept": accept} if accept else {}
        response = client.get(dump_url(token), headers=headers)
        assert response.status_code == 403
        assert response.mimetype == "application/json"
        assert response.get_json() == {"error": reason}
    # A browser gets a page that says what happened and how to get a new link.
    for response in (
        client.get(dump_url(token), headers={"Accept": BROWSER}),
        client.get(dump_url(token, format="html")),
    ):
        assert response.status_code == 403
        assert response.mimetype == "text/html"
        page = response.get_data(as_text=True)
        title = {
            "expired token": "This link has expired",
            "missing token": "This address needs a signed link",
        }.get(reason, "This link is not valid")
        assert f"<h1>{title}</h1>" in page
        assert "<pre>flask --app yourapp utd url</pre>" in page
        assert "within 5 minutes" in page and f"403 {reason}" in page
        assert "<script" not in page
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert listening.connections() == 0


def test_an_overlong_token_is_refused_unread(
    client: FlaskClient, listening: Listening
) -> None:
    response = client.get(dump_url("x" * 10_000))
    assert response.status_code == 403
    assert response.get_json() == {"error": "malformed token"}
    assert listening.connections() == 0


def test_a_good_token_collects(client: FlaskClient, listening: Listening) -> None:
    # The probe never answers: with UTD_TIMEOUT 2 s it is reported as a timeout.
    response = client.get(dump_url(make_token(SECRET, 60)))
    assert response.status_code == 200
    assert listening.connections() == 1
    report = response.get_json()
    statuses = {p["pid"]: p["status"] for p in report["processes"]}
    assert statuses[900009] == "timeout"


def test_a_token_in_an_authorization_header(client: FlaskClient) -> None:
    """Scripts send the token as a Bearer token, out of every access log."""
    token = make_token(SECRET, 60)
    bearer = {"Authorization": f"Bearer {token}"}
    response = client.get("/_utd/dump?format=json", headers=bearer)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["schema"] == "flask-utd/1"
    # The same rules as in the URL.
    for bad, reason in (
        ({"Authorization": "Bearer nope"}, "invalid token"),
        ({"Authorization": f"Bearer {'a' * 600}"}, "malformed token"),
        ({"Authorization": f"Basic {token}"}, "missing token"),
        ({"Authorization": "Bearer"}, "missing token"),
    ):
        response = client.get("/_utd/dump", headers=bad)
        assert response.status_code == 403, bad
        assert response.get_json() == {"error": reason}, bad
    # A token in the URL is the one checked, whatever the header says.
    response = client.get(dump_url("nope"), headers=bearer)
    assert response.status_code == 403


def test_utd_secret_key_signs_instead_of_secret_key(
    app: Flask, socket_dir: str
) -> None:
    other = Flask("other")
    other.config.update(
        TESTING=True,
        SECRET_KEY=SECRET,
        UTD_SECRET_KEY="dump-only",
        UTD_SOCKET_DIR=socket_dir,
    )
    from flask_utd import utd_bp

    other.register_blueprint(utd_bp)
    client = other.test_client()
    assert client.get(dump_url(make_token(SECRET, 60))).status_code == 403
    assert client.get(dump_url(make_token("dump-only", 60))).status_code == 200


def _get(client: Any, accept: str | None = None, **args: str) -> Any:
    headers = {"Accept": accept} if accept else {}
    return client.get(dump_url(make_token(SECRET, 60), **args), headers=headers)


def test_json_is_the_flask_utd_1_report(client: FlaskClient) -> None:
    for response in (
        _get(client),  # no Accept header
        _get(client, "*/*"),  # curl
        _get(client, "application/json"),
        _get(client, BROWSER, format="json"),
    ):
        assert response.status_code == 200
        assert response.mimetype == "application/json"
        report = response.get_json()
        assert report["schema"] == "flask-utd/1"
        # Compact JSON, one line: indenting costs more than the collection.
        assert response.get_data(as_text=True).count("\n") == 1
        (process,) = report["processes"]
        assert process["pid"] == os.getpid() and process["status"] == "ok"
        # The view's thread waits on the collector; the agent took the dump.
        me = next(t for t in process["threads"] if t["ident"] == threading.get_ident())
        assert any(f["function"] == "collect" for f in me["frames"])
        assert any(f["function"] == "dump" for f in me["frames"])
        assert response.headers["Cache-Control"] == "no-store"
        assert "Accept" in response.vary


def test_text(client: FlaskClient) -> None:
    for response in (_get(client, format="text"), _get(client, "text/plain")):
        assert response.status_code == 200
        assert response.mimetype == "text/plain"
        text = response.get_data(as_text=True)
        assert f"process (pid {os.getpid()}): ok" in text
        assert "\nFull dump:\n" in text
        assert 'Thread "utd-agent"' in text


def test_html_for_a_browser(client: FlaskClient) -> None:
    for response in (_get(client, BROWSER), _get(client, format="html")):
        assert response.status_code == 200
        assert response.mimetype == "text/html"
        page = response.get_data(as_text=True)
        assert page.startswith("<!doctype html>")
        assert f"process (pid {os.getpid()})" in page
        assert "1 / 1" in page  # answered / processes
        assert "utd-agent" in page
        # Self-contained: no external assets, nothing leaves the page.
        assert "<link" not in page and "<script" not in page and "src=" not in page
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp
        assert response.headers["Referrer-Policy"] == "no-referrer"


def test_an_unknown_format_is_400(client: FlaskClient) -> None:
    response = _get(client, format="xml")
    assert response.status_code == 400
    assert ", ".join(FORMATS) in response.get_json()["error"]


def test_html_escapes_what_threads_carry(client: FlaskClient) -> None:
    """Thread names and source lines are untrusted text."""
    release = threading.Event()

    def waiting() -> None:
        release.wait(30)  # <script>alert("code")</script>

    thread = threading.Thread(target=waiting, name='<img src=x onerror="alert(1)">')
    thread.start()
    try:
        page = _get(client, format="html").get_data(as_text=True)
    finally:
        release.set()
        thread.join(5)
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page
    assert "&lt;script&gt;alert(&#34;code&#34;)&lt;/script&gt;" in page
    assert "<img" not in page and "<script" not in page


def test_one_collection_at_a_time_else_429(app: Flask, listening: Listening) -> None:
    # The probe keeps the first collection busy until its deadline (UTD_TIMEOUT).
    first: dict[str, Any] = {}

    def slow() -> None:
        first["response"] = app.test_client().get(dump_url(make_token(SECRET, 60)))

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        wait_for(lambda: listening.connections() == 1, timeout=10)
        response = app.test_client().get(dump_url(make_token(SECRET, 60)))
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "3"  # UTD_TIMEOUT 2 s + margin
        assert "try again" in response.get_json()["error"]
    finally:
        thread.join(15)
    assert first["response"].status_code == 200
    # Once the first is done, the next one collects.
    assert app.test_client().get(dump_url(make_token(SECRET, 60))).status_code == 200


def test_url_command_prints_a_url_the_endpoint_accepts(
    runner: FlaskCliRunner, client: FlaskClient
) -> None:
    result = runner.invoke(args=["utd", "url"])
    assert result.exit_code == 0, result.output
    path = result.output.strip()
    assert path.startswith("/_utd/dump?token=")
    assert client.get(path).status_code == 200
    # A tampered copy of the same URL is not.
    assert (
        client.get(path[:-2] + ("AA" if not path.endswith("AA") else "BB")).status_code
        == 403
    )

    result = runner.invoke(
        args=["utd", "url", "--base", "https://app.example.com/", "--expires", "30"]
    )
    assert result.exit_code == 0, result.output
    url = result.output.strip()
    assert url.startswith("https://app.example.com/_utd/dump?token=")
    assert client.get(url.removeprefix("https://app.example.com")).status_code == 200


@pytest.mark.parametrize(
    ("listen", "base"),
    [
        ("127.0.0.1:9191", "http://127.0.0.1:9191"),
        ("[::1]:9191", "http://[::1]:9191"),
        ("0.0.0.0:9191", f"http://{socket.gethostname()}:9191"),
    ],
)
def test_url_command_gives_the_admin_listeners_full_url(
    socket_dir: str, listen: str, base: str
) -> None:
    """With ``UTD_ADMIN_LISTEN`` at a host and port, the URL to open is the
    admin listener's: nothing for the user to complete."""
    from flask_utd import utd_bp

    app = Flask("withadmin")
    app.config.update(
        TESTING=True,
        SECRET_KEY=SECRET,
        UTD_SOCKET_DIR=socket_dir,
        UTD_ADMIN_LISTEN=listen,
    )
    app.register_blueprint(utd_bp)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["utd", "url"])
    assert result.exit_code == 0, result.output
    url = result.output.strip()
    assert url.startswith(f"{base}/_utd/dump?token=")
    client = app.test_client()
    assert client.get(url.removeprefix(base)).status_code == 200
    # --base still wins.
    other = runner.invoke(args=["utd", "url", "--base", "https://app.example.com"])
    assert other.output.startswith("https://app.example.com/_utd/dump?token=")


def test_url_command_with_an_admin_listener_on_a_unix_socket(socket_dir: str) -> None:
    from flask_utd import utd_bp

    app = Flask("withunixadmin")
    where = os.path.join(socket_dir, "admin.sock")
    app.config.update(
        TESTING=True,
        SECRET_KEY=SECRET,
        UTD_SOCKET_DIR=socket_dir,
        UTD_ADMIN_LISTEN=f"unix:{where}",
    )
    app.register_blueprint(utd_bp)
    result = app.test_cli_runner().invoke(args=["utd", "url"])
    assert result.exit_code == 0, result.output
    path = result.stdout.strip()
    assert path.startswith("/_utd/dump?token=")
    assert result.stderr == (
        f"The admin listener is on the Unix socket {where}: curl --unix-socket"
        f" {where} 'http://localhost{path}'\n"
    )


@pytest.mark.parametrize("expires", ["0", "-1", "301"])
def test_url_command_refuses_a_lifetime_beyond_the_maximum(
    runner: FlaskCliRunner, expires: str
) -> None:
    result = runner.invoke(args=["utd", "url", "--expires", expires])
    assert result.exit_code == 2
    assert "UTD_URL_MAX_AGE" in result.output


def test_url_command_in_a_subprocess_exits_promptly_and_starts_no_agent(
    socket_dir: str,
) -> None:
    """The demo app starts a non-daemon thread at import; `flask utd url` ends."""
    env = dict(
        os.environ,
        DEMO_UTD_SOCKET_DIR=socket_dir,
        DEMO_SECRET_KEY="from-the-environment",
        PYTHONPATH=str(ROOT),
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "demo_app.app",
            "utd",
            "url",
            "--base",
            "http://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip()
    assert url.startswith("http://127.0.0.1:9/_utd/dump?token=")
    token = url.split("token=")[1]
    from flask_utd.ext.signing import check_token

    check_token("from-the-environment", token, 300)
    leftovers = [
        os.path.join(d, f) for d, _, files in os.walk(socket_dir) for f in files
    ]
    assert leftovers == []


def test_a_forked_child_does_not_inherit_a_held_collection_lock() -> None:
    """The admin listener may hold the lock when the master forks a worker."""
    from flask_utd.ext import endpoint

    with endpoint._collecting, warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os._exit(0 if endpoint._collecting.acquire(blocking=False) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _frame(function: str, code: str, file: str = "/srv/app/views.py") -> Frame:
    return {"file": file, "line": 7, "function": function, "code": code}


def test_the_page_uses_summary_request_and_wait_when_present(app: Flask) -> None:
    """The fields the collector may add (request, wait, summary) and statuses
    other than ok, rendered from a report made by hand."""
    from flask import render_template

    from flask_utd.core.render import page_context

    request: Request = {
        "method": "POST",
        "path": "/orders",
        "endpoint": "orders",
        "request_id": "r-1",
        "started_at": "2026-01-01T00:00:00+00:00",
        "elapsed_s": 12.34,
    }
    stack = [_frame("wsgi_app", "x = 1", "/venv/site-packages/flask/app.py")]
    report: Report = {
        "schema": "flask-utd/1",
        "generated_at": "2026-01-01T00:00:12+00:00",
        "host": "h",
        "instance": "10",
        "elapsed_s": 0.01,
        "processes": [
            {
                "pid": 11,
                "role": "worker",
                "worker_id": 1,
                "status": "ok",
                "error": None,
                "threads": [
                    {
                        "ident": 1,
                        "native_id": 1,
                        "name": "idle-thread",
                        "daemon": True,
                        "is_agent": False,
                        "request": None,
                        "wait": "sleeping",
                        "frames": [_frame("idle", "time.sleep(1)")],
                    },
                    {
                        "ident": 2,
                        "native_id": 2,
                        "name": "utd-agent",
                        "daemon": True,
                        "is_agent": True,
                        "request": None,
                        "wait": "running",
                        "frames": [_frame("dump", "report()")],
                    },
                    {
                        "ident": 3,
                        "native_id": 3,
                        "name": "uWSGIWorker1Core0",
                        "daemon": False,
                        "is_agent": False,
                        "request": request,
                        "wait": "waiting-lock",
                        "wait_frame": 1,
                        "frames": [*stack, _frame("orders", "lock.acquire()")],
                    },
                ],
            },
            {
                "pid": 12,
                "role": "worker",
                "worker_id": 2,
                "status": "timeout",
                "error": "process 12 did not answer within 2 s (UTD_TIMEOUT).",
                "threads": [],
            },
        ],
        "summary": {
            "processes": 2,
            "answered": 1,
            "threads_by_state": {"sleeping": 1, "running": 1, "waiting-lock": 1},
            "stuck_requests": [
                {
                    "pid": 11,
                    "role": "worker",
                    "worker_id": 1,
                    "thread": "uWSGIWorker1Core0",
                    "ident": 3,
                    "method": "POST",
                    "path": "/orders",
                    "endpoint": "orders",
                    "request_id": "r-1",
                    "elapsed_s": 12.34,
                    "app_frame": _frame("orders", "lock.acquire()"),
                }
            ],
            "stack_groups": [],
        },
    }
    with app.test_request_context():
        page = render_template("utd/dump.html", **page_context(report))
    assert ">1 / 2<" in page  # answered / processes
    states = page.split('id="summary"')[1].split("</div>\n  </div>")[0]
    assert states.index("waiting-lock") < states.index("sleeping")
    assert "<h2>Requests in progress</h2>" in page
    table = page.split('class="stuck"')[1].split("</table>")[0]
    assert "POST /orders" in table and "12.3 s" in table and "lock.acquire()" in table
    assert '<tr class="slow">' in table and ">stuck<" in table
    worker = page.split('id="pid-11"')[1].split("</section>")[0]
    # The request thread first, the agent dimmed and last.
    assert worker.index("uWSGIWorker1Core0") < worker.index("idle-thread")
    assert worker.index("idle-thread") < worker.index("utd-agent")
    assert 'class="thread agent"' in worker
    assert "POST /orders · 12.3 s" in worker
    assert '<span class="chip">waiting-lock</span>' in worker
    silent = page.split('id="pid-12"')[1].split("</section>")[0]
    assert "timeout" in silent and "did not answer within 2 s" in silent


def test_the_token_never_shows_in_a_dump_even_with_query_capture(
    socket_dir: str,
) -> None:
    from flask_utd import utd_bp

    app = Flask("capturing")
    app.config.update(
        TESTING=True,
        SECRET_KEY=SECRET,
        UTD_SOCKET_DIR=socket_dir,
        UTD_CAPTURE_QUERY=True,
    )
    app.register_blueprint(utd_bp)
    token = make_token(SECRET, 60)
    body = app.test_client().get(dump_url(token, format="json")).get_data(as_text=True)
    assert "/_utd/dump" in body  # this request's thread, with its path
    assert token not in body


def test_admin_listen_that_no_master_can_serve_is_one_warning(
    socket_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Outside uWSGI and gunicorn (here the test client, as under `flask run`)
    there is no master to run the admin listener: the first request says so,
    once; setting the app up (as `flask utd url` does) says nothing."""
    app = Flask("run")
    app.config.update(
        SECRET_KEY=SECRET, UTD_SOCKET_DIR=socket_dir, UTD_ADMIN_LISTEN="127.0.0.1:0"
    )
    with caplog.at_level("WARNING", logger="flask_utd"):
        app.register_blueprint(utd_bp)
        assert caplog.messages == []
        client = app.test_client()
        client.get("/")
        client.get("/")
    (message,) = caplog.messages
    assert message.startswith("flask-utd: UTD_ADMIN_LISTEN is set but pid")
    assert "no master process to run the admin listener" in message
