"""``make demo``: serve demo_app with uwsgi.ini (a master with flask-utd's admin
listener, and 2 workers), make both workers stuck on ``/hello``, print ``flask
utd dump`` and a signed URL of the dump page to open in a browser, then keep
serving until Ctrl-C.

With ``DEMO_ONCE=1`` it stops the server and exits 0 after printing.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from flask_utd.core.collector import collect
from flask_utd.core.config import DEFAULTS
from flask_utd.core.config import default_socket_dirs

from .server import ROOT
from .server import UwsgiServer
from .server import ini_without_address
from .server import uwsgi_binary

#: The demo app keeps flask-utd's default.
SLOW_REQUEST: float = DEFAULTS["UTD_SLOW_REQUEST"]
#: What the master logs once its admin listener listens.
_ADMIN_BOUND = re.compile(r"admin listener of the uWSGI master \(pid \d+\) bound to")


def _get(url: str) -> None:
    try:
        urllib.request.urlopen(url, timeout=120).read()
    except OSError:
        pass  # the server was stopped under the request: expected at the end


def _free_address() -> str:
    """``127.0.0.1:<a port free now>`` for the admin listener: uwsgi.ini's fixed
    port may be taken (by another demo, or a test run)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def _workers_stuck(socket_dir: str, instance: str) -> bool:
    """Whether both workers serve a /hello that is older than UTD_SLOW_REQUEST,
    so that the dump opens with them as stuck requests."""
    report = collect(socket_dir, instance, timeout=2, slow_after=SLOW_REQUEST)
    stuck = report["summary"]["stuck_requests"]
    return len({s["pid"] for s in stuck if s["endpoint"] == "hello"}) >= 2


def _flask(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "demo_app.app", "utd", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
    )


def _page_url(server: UwsgiServer, env: dict[str, str]) -> str | None:
    """The signed URL of the dump page from `flask utd url`, once the master's
    admin listener answers it; ``None``, said, when it does not."""
    deadline = time.monotonic() + 20
    while not _ADMIN_BOUND.search(server.log()):
        if time.monotonic() > deadline or (server.proc and server.proc.poll()):
            print("The master's admin listener did not start; uWSGI log:")
            print(server.log())
            return None
        time.sleep(0.1)
    made = _flask("url", env=env)
    url = made.stdout.strip()
    if made.returncode != 0 or not url.startswith("http://"):
        print(f"flask utd url exited with {made.returncode}: {url}")
        return None
    request = urllib.request.Request(url, headers={"Accept": "text/html"})
    try:
        with urllib.request.urlopen(request, timeout=30) as page:
            if b"Requests in progress" not in page.read():
                raise OSError("the page shows no request in progress")
    except OSError as err:
        print(f"The dump page at {url} does not answer: {err}")
        return None
    return url


def main() -> int:
    uwsgi = uwsgi_binary()
    if uwsgi is None:
        print("uWSGI is not installed in this virtualenv: run `make demo`.")
        return 2
    # The demo app reads DEMO_-prefixed environment variables into its config.
    socket_dir = os.environ.get("DEMO_UTD_SOCKET_DIR") or default_socket_dirs()[0]
    admin = os.environ.get("DEMO_UTD_ADMIN_LISTEN") or _free_address()
    env = dict(os.environ, DEMO_UTD_ADMIN_LISTEN=admin)
    with tempfile.TemporaryDirectory(prefix="utd-demo-") as tmp:
        options = ini_without_address(Path(tmp) / "uwsgi.ini")
        server = UwsgiServer(uwsgi, options, Path(tmp) / "uwsgi.log", env=env)
        print(
            "Starting uWSGI with uwsgi.ini (a master, with flask-utd's admin"
            f" listener on {admin}, and 2 workers) ..."
        )
        server.start()
        try:
            instance = str(server.pid)
            print(f"Serving on {server.url('/')}; sending 2 requests to /hello ...")
            for _ in range(2):
                threading.Thread(
                    target=_get, args=(server.url("/hello"),), daemon=True
                ).start()
            deadline = time.monotonic() + 30
            while not _workers_stuck(socket_dir, instance):
                if time.monotonic() > deadline:
                    print("The workers did not get stuck on /hello; uWSGI log:")
                    print(server.log())
                    return 1
                time.sleep(0.2)
            print(
                f"Both workers have been stuck for more than {SLOW_REQUEST:g} s."
                " `flask --app demo_app.app utd dump` says:\n"
            )
            sys.stdout.flush()
            dumped = _flask("dump", "--instance", instance, env=env)
            sys.stdout.write(dumped.stdout)
            if dumped.returncode != 0:
                print(f"flask utd dump exited with {dumped.returncode}")
                return dumped.returncode
            url = _page_url(server, env)
            if url is None:
                return 1
            print(
                "\nThe same dump as a page, served by the master's admin listener"
                " (it answers while every worker is stuck). Open it in a browser"
                " within 5 minutes; `flask --app demo_app.app utd url` makes a new"
                f" one:\n\n    {url}\n"
            )
            if os.environ.get("DEMO_ONCE"):
                return 0
            print(f"Still serving on {server.url('/')}; press Ctrl-C to stop.")
            sys.stdout.flush()
            try:
                while server.proc is not None and server.proc.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
            return 0
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
