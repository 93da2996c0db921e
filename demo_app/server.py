"""Start and stop a real uWSGI serving an app: used by the demo and the tests.

The server listens on 127.0.0.1 on a port the OS picks, runs in its own process
group, and is stopped by PID with a deadline: a uWSGI master whose app started a
non-daemon thread does not exit on SIGINT (see docs/uwsgi.md).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from flask_utd.core.sockets import live_children

ROOT = Path(__file__).resolve().parent.parent
_PORT = re.compile(rb"bound to TCP address 127\.0\.0\.1:(\d+)")


class UwsgiServer:
    """A uWSGI server started as a subprocess.

    :param uwsgi: the ``uwsgi`` binary (its Python is the one the app runs on).
    :param options: uWSGI options, as on the command line (``--master``, ...).
    :param log_path: where uWSGI writes its log.
    :param env: extra environment for the server.
    """

    def __init__(
        self,
        uwsgi: str,
        options: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.uwsgi = uwsgi
        self.options = list(options)
        self.log_path = log_path
        self.env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        """The server's log so far."""
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    #: What the server's log says once it listens, with the port as group 1.
    listening = _PORT

    def argv(self) -> list[str]:
        """The command line: listen on 127.0.0.1, a port the OS picks."""
        venv = str(Path(self.uwsgi).resolve().parent.parent)
        return [
            self.uwsgi,
            "--http-socket",
            "127.0.0.1:0",
            "--virtualenv",
            venv,
            "--chdir",
            str(ROOT),
            *self.options,
        ]

    def start(self, timeout: float = 30.0) -> UwsgiServer:
        """Start the server and wait until it listens."""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=str(ROOT),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = self.listening.search(self.log_path.read_bytes())
            if match:
                self.port = int(match.group(1))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        name = type(self).__name__
        raise RuntimeError(f"{name} did not start; its log:\n{self.log()}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL to its process group at the
        deadline."""
        if self.proc is None or self.proc.returncode is not None:
            return
        pgid = self.proc.pid  # start_new_session: the master leads its own group
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def uwsgi_binary() -> str | None:
    """The ``uwsgi`` next to this Python, if installed."""
    candidate = Path(sys.executable).parent / "uwsgi"
    return str(candidate) if candidate.exists() else None


#: The lines of uwsgi.ini that hold a fixed address: the app's, and the admin
#: listener's (``env = DEMO_UTD_ADMIN_LISTEN=...``).
_FIXED_ADDRESS = re.compile(r"\s*(http-socket\b|env\s*=\s*DEMO_UTD_ADMIN_LISTEN=)")


def ini_without_address(dest: Path, ini: Path = ROOT / "uwsgi.ini") -> list[str]:
    """Copy ``uwsgi.ini`` to ``dest`` without its fixed addresses (the app's and
    the admin listener's), and return the options that load it: the server then
    listens where :meth:`UwsgiServer.start` says, with no admin listener unless
    ``DEMO_UTD_ADMIN_LISTEN`` is in its environment."""
    lines = [
        line for line in ini.read_text().splitlines() if not _FIXED_ADDRESS.match(line)
    ]
    dest.write_text("\n".join(lines) + "\n")
    return ["--ini", str(dest)]


_GUNICORN_PORT = re.compile(rb"Listening at: http://127\.0\.0\.1:(\d+)")


class GunicornServer(UwsgiServer):
    """A gunicorn server started as a subprocess, like :class:`UwsgiServer`.

    :param gunicorn: the ``gunicorn`` script (its Python is the one the app runs on).
    :param options: gunicorn options and the app (``-c conf.py -w 2 app:app``).
    """

    listening = _GUNICORN_PORT

    def argv(self) -> list[str]:
        return [self.uwsgi, "--bind", "127.0.0.1:0", *self.options]


def children(pid: int) -> set[int]:
    """The PIDs of the live (not zombie) children of ``pid``, from ``/proc``."""
    return live_children(pid)
