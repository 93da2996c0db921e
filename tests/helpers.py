"""What several test modules share that is not a fixture: polling, subprocesses,
the uWSGI binaries, the servers a test starts, and the tokens the endpoint refuses.
The fixtures are in ``conftest.py``; test modules import from here, never from
``conftest`` or from one another."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from typing import TypeVar

import pytest
from itsdangerous import TimestampSigner
from itsdangerous import URLSafeTimedSerializer

from demo_app.server import ROOT
from demo_app.server import GunicornServer
from demo_app.server import UwsgiServer
from flask_utd.core.collector import collect
from flask_utd.core.report import Report
from flask_utd.ext.signing import SALT
from flask_utd.ext.signing import make_token

S = TypeVar("S", bound=UwsgiServer)


def context_switches(tid: int) -> int:
    """How many times thread ``tid`` of this process has been switched out,
    voluntarily or not (``/proc/self/task/<tid>/status``): a thread that never
    wakes up keeps the same count."""
    count = 0
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.startswith(
                ("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")
            ):
                count += int(line.split()[1])
    return count


def wait_for(
    condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {condition}")
        time.sleep(interval)


# Subprocesses


def as_another_uid(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a Python that imports first, then drops to uid and gid 65534
    (``nobody``) before the lines after the ``# as nobody`` marker; needs root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another uid")
    before, after = code.split("# as nobody\n")
    program = before + "os.setgid(65534); os.setuid(65534)\n" + after
    return subprocess.run(
        [sys.executable, "-c", program, *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def open_modes(socket_dir: str, socket_path: str) -> None:
    """Open the directories and the socket to everyone, as by mistake: only the
    peer check is left to refuse another uid."""
    os.chmod(socket_dir, 0o755)
    os.chmod(os.path.dirname(socket_path), 0o755)
    os.chmod(socket_path, 0o666)


def lean_dump(socket_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m flask_utd dump --socket-dir DIR ARGS`` in a new process."""
    return subprocess.run(
        [sys.executable, "-m", "flask_utd", "dump", "--socket-dir", socket_dir, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


# uWSGI binaries


def _venv_uwsgis() -> dict[str, str]:
    """``{python version: uwsgi binary}``: this venv's, and those in .venvs/."""
    found: dict[str, str] = {}
    own = Path(sys.executable).parent / "uwsgi"
    if own.exists():
        found[f"{sys.version_info[0]}.{sys.version_info[1]}"] = str(own)
    for venv in sorted((ROOT / ".venvs").glob("3.*")):
        binary = venv / "bin" / "uwsgi"
        if binary.exists():
            found.setdefault(venv.name, str(binary))
    return found


UWSGIS = _venv_uwsgis()
SUPPORTED = ["3.10", "3.11", "3.12", "3.13"]


def need_uwsgi(version: str | None = None) -> str:
    """The uwsgi binary for ``version`` (default: this Python's); with ``CI`` set,
    a missing one fails the test instead of skipping it."""
    version = version or f"{sys.version_info[0]}.{sys.version_info[1]}"
    binary = UWSGIS.get(version)
    if binary is None:
        message = f"uWSGI for Python {version} is not installed (run `make test`)"
        if (
            os.environ.get("CI")
            and version == f"{sys.version_info[0]}.{sys.version_info[1]}"
        ):
            pytest.fail(message)
        pytest.skip(message)
    return binary


# Servers a test starts (the ``servers`` and ``gunicorns`` fixtures)


class _Launcher:
    """Starts servers for one test and stops them all at its end."""

    def __init__(self, tmp_path: Path, socket_dir: str) -> None:
        self.tmp_path = tmp_path
        self.socket_dir = socket_dir
        self.started: list[UwsgiServer] = []

    def launch(
        self,
        kind: type[S],
        binary: str,
        options: list[str],
        env: dict[str, str],
    ) -> S:
        """Start a server of class ``kind`` (uWSGI, or gunicorn), stopped at the
        test's end; the demo app's socket directory is this test's."""
        full_env = {
            "DEMO_UTD_SOCKET_DIR": self.socket_dir,
            "PYTHONPATH": str(ROOT),
            **env,
        }
        log = self.tmp_path / f"{kind.__name__.lower()}-{len(self.started)}.log"
        server = kind(binary, options, log, env=full_env)
        self.started.append(server)
        server.start()
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


class Servers(_Launcher):
    """Starts uWSGI servers for one test and stops them all at its end."""

    def start(
        self,
        binary: str,
        options: list[str],
        env: dict[str, str] | None = None,
    ) -> UwsgiServer:
        return self.launch(
            UwsgiServer, binary, options, {"DEMO_HELLO_SECONDS": "60", **(env or {})}
        )


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts: only its parent can reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return True
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] in (b"Z", b"X")


class DaemonizedUwsgi(UwsgiServer):
    """uWSGI with ``--daemonize2``: the process started loads the app, forks to
    daemonize and exits; the master goes on in a grandchild, whose pid uWSGI
    writes to a pidfile. Its log goes on in the same file."""

    def __init__(
        self,
        uwsgi: str,
        options: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.pidfile = log_path.with_suffix(".pid")
        daemon = ["--daemonize2", str(log_path), "--pidfile", str(self.pidfile)]
        super().__init__(uwsgi, [*options, *daemon], log_path, env)
        self.master: int | None = None

    @property
    def pid(self) -> int:
        """The master's pid, from its pidfile."""
        assert self.master is not None
        return self.master

    def start(self, timeout: float = 30.0) -> DaemonizedUwsgi:
        super().start(timeout)
        assert self.proc is not None
        # The process that loaded the app exits once it has daemonized.
        loader = self.proc.pid
        self.proc.wait(timeout)

        def master() -> int:
            # uWSGI writes the pidfile at start-up (the loader's pid), then
            # again in the daemonized master.
            text = self.pidfile.read_text().strip() if self.pidfile.exists() else ""
            pid = int(text) if text.isdigit() else 0
            return pid if pid != loader else 0

        self.master = wait_for(master, timeout=timeout)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to the master by its pid; SIGKILL to its process group (the
        workers are in it) at the deadline."""
        super().stop(timeout)  # the process that loaded the app, if still there
        if self.master is None or process_gone(self.master):
            return
        group = os.getpgid(self.master)
        os.kill(self.master, signal.SIGTERM)
        try:
            wait_for(lambda: process_gone(self.master or 0), timeout=timeout)
        except AssertionError:
            os.killpg(group, signal.SIGKILL)
            wait_for(lambda: process_gone(self.master or 0), timeout=timeout)


GUNICORN = str(Path(sys.executable).parent / "gunicorn")
GUNICORN_CONF = str(ROOT / "tests" / "apps" / "gunicorn_conf.py")


class Gunicorns(_Launcher):
    """Starts gunicorn servers for one test and stops them all at its end."""

    def start(
        self,
        options: list[str],
        env: dict[str, str] | None = None,
        *,
        hooks: bool = True,
    ) -> GunicornServer:
        """Start gunicorn with ``options``, with flask-utd's hooks (``hooks``:
        the ``gunicorn.conf.py`` of the tests) or without."""
        # The hooks read the socket directory from the environment, the app from
        # its config.
        env = {"UTD_SOCKET_DIR": self.socket_dir, **(env or {})}
        conf = ["-c", GUNICORN_CONF] if hooks else []
        return self.launch(GunicornServer, GUNICORN, [*conf, *options], env)


def unix_get(
    path: str, url: str, timeout: float = 10, **headers: str
) -> tuple[int, bytes]:
    """``GET url`` over the Unix socket ``path``: the status and the body."""

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(timeout)
            self.sock.connect(path)

    conn = UnixConnection("localhost", timeout=timeout)
    try:
        conn.request("GET", url, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def report_of(server: UwsgiServer, socket_dir: str, **kwargs: Any) -> Report:
    return collect(socket_dir, str(server.pid), **kwargs)


# The demo app under uWSGI with its admin listener


#: The demo app's SECRET_KEY under uWSGI (``start_demo``).
DEMO_SECRET = "uwsgi-test-secret"
_DEMO_OPTIONS = [
    "--module",
    "demo_app.app:app",
    "--master",
    "--workers",
    "2",
    "--die-on-term",
]
_HOOKS = ["--py-call-uwsgi-fork-hooks"]
_ADMIN = re.compile(r"admin listener of the uWSGI master \(pid \d+\) bound to (\S+)")


def start_demo(
    servers: Servers,
    *,
    hooks: bool = True,
    admin: str | None = None,
    version: str | None = None,
) -> UwsgiServer:
    """The demo app under uWSGI, a master and 2 workers, signing with
    ``DEMO_SECRET``; ``admin`` is the master's ``UTD_ADMIN_LISTEN``."""
    env = {"DEMO_SECRET_KEY": DEMO_SECRET}
    if admin is not None:
        env["DEMO_UTD_ADMIN_LISTEN"] = admin
    return servers.start(
        need_uwsgi(version), _DEMO_OPTIONS + (_HOOKS if hooks else []), env=env
    )


def admin_address(server: UwsgiServer) -> str:
    """Where the master's admin listener listens, from the uWSGI log."""
    match = wait_for(lambda: _ADMIN.search(server.log()), timeout=20)
    return match.group(1)


def signed_path(**args: str) -> str:
    query = "&".join(
        f"{k}={v}" for k, v in {"token": make_token(DEMO_SECRET, 60), **args}.items()
    )
    return f"/_utd/dump?{query}"


def stick(server: UwsgiServer, n: int) -> None:
    """Send ``n`` requests to ``/hello``, which sleeps for a minute."""

    def hello() -> None:
        try:
            urllib.request.urlopen(server.url("/hello"), timeout=120).read()
        except OSError:
            pass  # the server is stopped under the request at the test's end

    for _ in range(n):
        threading.Thread(target=hello, daemon=True).start()


def stuck_workers(report: Report) -> list[int]:
    """Pids of the workers whose request thread is in ``hello``."""
    return [
        p["pid"]
        for p in report["processes"]
        if p["role"] == "worker"
        and any(
            t["frames"] and t["frames"][-1]["function"] == "hello" for t in p["threads"]
        )
    ]


def wait_stuck(server: UwsgiServer, socket_dir: str, n: int) -> list[int]:
    last: dict[str, Report] = {}

    def stuck() -> list[int]:
        last["report"] = report = report_of(server, socket_dir)
        found = stuck_workers(report)
        return found if len(found) == n else []

    try:
        return wait_for(stuck, timeout=30)
    except AssertionError:
        print(json.dumps(last.get("report"), indent=1))
        print(server.log())
        raise


# Tokens


#: The ``app`` fixture's SECRET_KEY, which ``bad_tokens`` signs with.
SECRET = "test-secret"
#: The default UTD_URL_MAX_AGE.
MAX_AGE = 300


def signed_at(
    payload: object, *, ago: float = 0, secret: str = SECRET, salt: str = SALT
) -> str:
    """A token as a holder of ``secret`` would sign it ``ago`` seconds ago."""

    class Signer(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - ago)

    return URLSafeTimedSerializer(secret, salt=salt, signer=Signer).dumps(payload)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def tampered_payload(token: str, payload: object) -> str:
    """The token with its payload replaced and its signature kept."""
    _, stamp, signature = token.split(".")
    return ".".join([_b64(json.dumps(payload).encode()), stamp, signature])


def tampered_signature(token: str) -> str:
    head, signature = token.rsplit(".", 1)
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    return f"{head}.{flipped}"


def bad_tokens() -> list[tuple[str, str | None, str]]:
    """``(case, token, reason)``: every way a token must be refused."""
    good = make_token(SECRET, 60)
    far = int(time.time()) + 10**6
    return [
        ("missing", None, "missing token"),
        ("empty", "", "missing token"),
        ("malformed", "not-a-token", "invalid token"),
        ("malformed-dots", "a.b.c.d", "invalid token"),
        ("tampered payload", tampered_payload(good, {"exp": far}), "invalid token"),
        ("tampered signature", tampered_signature(good), "invalid token"),
        ("another secret", make_token("another-secret", 60), "invalid token"),
        ("another salt", signed_at({"exp": far}, salt="itsdangerous"), "invalid token"),
        ("expired (exp)", signed_at({"exp": int(time.time()) - 1}), "expired token"),
        ("expired (age)", signed_at({"exp": far}, ago=MAX_AGE + 5), "expired token"),
        # Signed with the real key, claiming an expiry far away: still refused
        # once the signature is older than UTD_URL_MAX_AGE.
        (
            "forged far-future exp",
            signed_at({"exp": far}, ago=MAX_AGE + 1),
            "expired token",
        ),
        ("no exp", signed_at({"x": 1}), "invalid token"),
        ("exp not a number", signed_at({"exp": "never"}), "invalid token"),
        ("not an object", signed_at([far]), "invalid token"),
        ("signed in the future", signed_at({"exp": far}, ago=-3600), "expired token"),
    ]
