"""Threads blocked in named C calls, dumped by this process's own snapshot code:
``python -m tests.apps.calls`` prints ``{thread name: [wait, call]}`` as JSON.

Run by tests/test_waits.py under every supported Python, whose bytecode differs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from flask_utd.agent.snapshot import process_report


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="utd-calls-")
    path = os.path.join(tmp, "app.sqlite")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE post (id INTEGER PRIMARY KEY, title TEXT)")
    holder.execute("BEGIN EXCLUSIVE")
    a, b = socket.socketpair()
    r, w = os.pipe()

    def create() -> None:
        db = sqlite3.connect(path, timeout=30)
        db.execute("INSERT INTO post (title) VALUES (?)", ("hello",))
        db.close()

    def index() -> None:
        db = sqlite3.connect(path, timeout=30)
        cursor = db.cursor()
        cursor.execute("SELECT id, title FROM post")
        db.close()

    def receive() -> None:
        a.recv(1)

    def read() -> None:
        os.read(r, 1)

    def sleep() -> None:
        time.sleep(30)

    targets: list[Callable[[], None]] = [create, index, receive, read]
    threads = [threading.Thread(target=t, name=t.__name__) for t in targets]
    sleeper = threading.Thread(target=sleep, name="sleep", daemon=True)
    for thread in [*threads, sleeper]:
        thread.start()
    names = {t.name for t in [*threads, sleeper]}
    deadline = time.monotonic() + 20
    seen: dict[str, list[str | None]] = {}
    while time.monotonic() < deadline:
        report = process_report(role="process", worker_id=None)
        seen = {
            t["name"]: [t.get("wait"), t.get("call")]
            for t in report["threads"]
            if t["name"] in names
        }
        if all(wait not in ("running", None) for wait, _ in seen.values()):
            if len(seen) == len(names):
                break
        time.sleep(0.05)
    holder.execute("ROLLBACK")
    b.send(b"x")
    os.write(w, b"x")
    for thread in threads:
        thread.join(30)
    holder.close()
    shutil.rmtree(tmp, ignore_errors=True)
    json.dump(seen, sys.stdout)


if __name__ == "__main__":
    main()
