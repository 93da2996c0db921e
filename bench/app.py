"""The app the benchmark serves: a hello-world view and a view that gets stuck.

``BENCH_UTD=0`` leaves ``utd_bp`` out, for the throughput baseline;
``BENCH_UTD_SOCKET_DIR`` is the ``UTD_SOCKET_DIR``.
"""

from __future__ import annotations

import os
import time

from flask import Flask

app = Flask(__name__)
app.config.from_prefixed_env("BENCH")

if os.environ.get("BENCH_UTD", "1") == "1":
    from flask_utd import utd_bp

    app.register_blueprint(utd_bp)


@app.get("/hello")
def hello() -> str:
    return "Hello, World!"


@app.get("/stuck")
def stuck() -> str:
    time.sleep(float(os.environ.get("BENCH_STUCK_SECONDS", "600")))
    return "unstuck\n"
