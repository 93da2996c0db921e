"""The scenario flask-utd exists for: a background thread started at import, and
a view that gets stuck. Serve it with ``uwsgi --ini uwsgi.ini``."""

from __future__ import annotations

import os
import threading
import time

from flask import Flask

from flask_utd import utd_bp

#: How long ``/hello`` sleeps; the demo and the tests make it stick.
HELLO_SECONDS = float(os.environ.get("DEMO_HELLO_SECONDS", "30"))

app = Flask(__name__)
# A demo key, as in Flask's tutorial: it signs the dump URLs (`flask utd url`).
# Set a real one in the environment: DEMO_SECRET_KEY=...
app.config["SECRET_KEY"] = "dev"
app.config.from_prefixed_env("DEMO")
app.register_blueprint(utd_bp)

ticks = 0


def count_forever() -> None:
    """A background thread like many apps have: metrics, a cache refresher..."""
    global ticks
    while True:
        time.sleep(3)
        ticks += 1


counter = threading.Thread(target=count_forever, name="demo-counter")
counter.start()


@app.get("/hello")
def hello() -> str:
    time.sleep(HELLO_SECONDS)
    return f"hello after {HELLO_SECONDS:g} s\n"


@app.get("/")
def index() -> str:
    return f"demo of flask-utd; the counter is at {ticks}\n"
