"""A test app that starts no thread at import. Under uWSGI, its own postfork hook
(registered before flask-utd's) starts a thread in every worker."""

from __future__ import annotations

import ctypes
import math
import os
import re
import threading
import time

from flask import Flask
from flask import request

from flask_utd import utd_bp

app = Flask(__name__)
app.config["SECRET_KEY"] = "test"
app.config.from_prefixed_env("DEMO")
beats = 0


def beat() -> None:
    global beats
    while True:
        time.sleep(0.05)
        beats += 1


try:
    from uwsgidecorators import postfork
except ImportError:
    pass
else:

    @postfork
    def start_app_thread() -> None:
        threading.Thread(target=beat, name="app-postfork-thread", daemon=True).start()


app.register_blueprint(utd_bp)


@app.get("/hello")
def hello() -> str:
    time.sleep(float(os.environ.get("DEMO_HELLO_SECONDS", "30")))
    return "hello\n"


@app.get("/beats")
def get_beats() -> str:
    return f"{beats}\n"


@app.get("/gil")
def hold_the_gil() -> str:
    # libc's sleep called through PyDLL keeps the GIL for the whole call: every
    # other thread of this process, the agent included, stands still.
    ctypes.PyDLL(None).sleep(int(os.environ.get("DEMO_GIL_SECONDS", "20")))
    return "slept holding the GIL\n"


@app.get("/regex")
def regex_holding_the_gil() -> str:
    # A regex that backtracks holds the GIL in C for its whole match, signals
    # included (faulthandler's signal interrupts libc's sleep in /gil, not
    # this). Each character more doubles the time: measured with 18 here, the
    # fastest of 5 (a busy machine only makes the match itself longer).
    seconds = float(os.environ.get("DEMO_REGEX_SECONDS", "10"))
    started = time.monotonic()
    units = []
    for _ in range(5):
        began = time.monotonic()
        re.match(r"(a+)+$", "a" * 18 + "!")
        units.append(time.monotonic() - began)
    unit = max(min(units), 1e-4)
    size = 18 + max(0, round(math.log2(seconds / unit)))
    re.match(r"(a+)+$", "a" * size + "!")
    time.sleep(float(request.args.get("then", "0")))  # still serving, GIL free
    return f"matched {size} characters in {time.monotonic() - started:.1f} s\n"


@app.get("/pid")
def get_pid() -> str:
    time.sleep(float(request.args.get("sleep", "0")))
    return f"{os.getpid()}\n"


if __name__ == "__main__":
    # `python tests/apps/plain.py`: Flask's development server on a free port.
    app.run(host="127.0.0.1", port=0)
