"""A test app for gevent servers: requests that wait in gevent's patched calls,
and one that spins on the CPU without yielding to the hub.

The app does not patch: the server does (gunicorn's gevent worker, uWSGI's
``gevent-monkey-patch``), unless ``GREEN_PATCH_AT_IMPORT=1`` asks it to patch at
the top of the module, as some apps do.
"""

from __future__ import annotations

import os

if os.environ.get("GREEN_PATCH_AT_IMPORT") == "1":
    from gevent import monkey

    monkey.patch_all()

import socket  # noqa: E402
import time  # noqa: E402

from flask import Flask  # noqa: E402
from flask import request  # noqa: E402

from flask_utd import utd_bp  # noqa: E402

app = Flask(__name__)
app.config["SECRET_KEY"] = "test"
app.config.from_prefixed_env("DEMO")
app.register_blueprint(utd_bp)


@app.get("/sleep")
def sleep() -> str:
    # time.sleep is gevent's once patched: the greenlet yields to the hub.
    time.sleep(float(request.args.get("seconds", "60")))
    return "slept\n"


@app.get("/read")
def read() -> str:
    # A patched socket read that nobody answers.
    mine, theirs = socket.socketpair()
    with mine, theirs:
        mine.settimeout(float(request.args.get("seconds", "60")))
        try:
            mine.recv(1)
        except OSError:
            pass
    return "read\n"


@app.get("/spin")
def spin() -> str:
    # On the CPU without yielding: the hub, and every other greenlet of this
    # worker, wait until it returns.
    end = time.monotonic() + float(request.args.get("seconds", "10"))
    while time.monotonic() < end:
        pass
    return "spun\n"


@app.get("/pid")
def pid() -> str:
    return f"{os.getpid()}\n"
