"""``make demo``: serve demo_app with uwsgi.ini, make both workers stuck on
``/hello``, print ``flask utd dump``, then keep serving until Ctrl-C.

With ``DEMO_ONCE=1`` it stops the server and exits 0 after printing.
"""

from __future__ import annotations

import os
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


def _get(url: str) -> None:
    try:
        urllib.request.urlopen(url, timeout=120).read()
    except OSError:
        pass  # the server was stopped under the request: expected at the end


def _workers_stuck(socket_dir: str, instance: str) -> bool:
    """Whether both workers serve a /hello that is older than UTD_SLOW_REQUEST,
    so that the dump opens with them as stuck requests."""
    report = collect(socket_dir, instance, timeout=2, slow_after=SLOW_REQUEST)
    stuck = report["summary"]["stuck_requests"]
    return len({s["pid"] for s in stuck if s["endpoint"] == "hello"}) >= 2


def main() -> int:
    uwsgi = uwsgi_binary()
    if uwsgi is None:
        print("uWSGI is not installed in this virtualenv: run `make demo`.")
        return 2
    # The demo app reads DEMO_-prefixed environment variables into its config.
    socket_dir = os.environ.get("DEMO_UTD_SOCKET_DIR") or default_socket_dirs()[0]
    with tempfile.TemporaryDirectory(prefix="utd-demo-") as tmp:
        options = ini_without_address(Path(tmp) / "uwsgi.ini")
        server = UwsgiServer(uwsgi, options, Path(tmp) / "uwsgi.log")
        print("Starting uWSGI with uwsgi.ini (a master and 2 workers) ...")
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
            code = subprocess.call(
                [
                    sys.executable,
                    "-m",
                    "flask",
                    "--app",
                    "demo_app.app",
                    "utd",
                    "dump",
                    "--instance",
                    instance,
                ],
                cwd=ROOT,
            )
            if code != 0:
                print(f"flask utd dump exited with {code}")
                return code
            if os.environ.get("DEMO_ONCE"):
                return 0
            print(f"\nStill serving on {server.url('/')}; press Ctrl-C to stop.")
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
