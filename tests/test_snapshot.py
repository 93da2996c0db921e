"""The dump of one process, taken in this process."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from demo_app.server import ROOT
from flask_utd.agent.ghosts import ghost_threads
from flask_utd.agent.snapshot import process_report
from flask_utd.core import marks
from flask_utd.core.report import Frame
from flask_utd.core.report import Thread
from tests.helpers import SUPPORTED
from tests.helpers import need_uwsgi
from tests.helpers import wait_for


def test_every_thread_python_knows_is_in_the_dump() -> None:
    ready = threading.Event()
    release = threading.Event()

    def parked_here() -> None:
        ready.set()
        release.wait(30)

    t = threading.Thread(target=parked_here, name="parked")
    t.start()
    try:
        ready.wait(5)
        report = process_report(
            role="process",
            worker_id=None,
        )
        known = set(sys._current_frames())
    finally:
        release.set()
        t.join()
    assert report["status"] == "ok" and report["pid"] == os.getpid()
    idents = {th["ident"] for th in report["threads"]}
    assert known <= idents | {threading.get_ident()}
    parked = next(th for th in report["threads"] if th["name"] == "parked")
    functions = [f["function"] for f in parked["frames"]]
    # Outermost first, innermost last, as in a traceback.
    assert functions[0] == "_bootstrap"
    assert "parked_here" in functions
    assert functions.index("parked_here") < len(functions) - 1  # wait() is deeper
    here = next(f for f in parked["frames"] if f["function"] == "parked_here")
    assert here["file"] == __file__ and here["code"] == "release.wait(30)"
    assert parked["native_id"] == t.native_id and parked["daemon"] is False
    assert parked["is_agent"] is False and parked["request"] is None
    json.dumps(report)


def test_agent_threads_are_marked_and_last() -> None:
    with marks.marking("agent"):
        report = process_report(role="worker", worker_id=3)
    assert report["role"] == "worker" and report["worker_id"] == 3
    last = report["threads"][-1]
    assert last["is_agent"] is True and last["own"] == "agent"
    assert last["ident"] == threading.get_ident()
    assert all(t["own"] is None for t in report["threads"][:-1])
    assert {t["kind"] for t in report["threads"]} == {"thread"}


def test_unsafe_process_reports_why_and_no_stacks() -> None:
    report = process_report(role="worker", worker_id=1, unsafe="because; do X")
    assert report["status"] == "unsafe"
    assert report["error"] == "because; do X"
    assert report["threads"] == []


def test_ghost_threads_are_found_after_a_fork_in_c() -> None:
    """Fork the way uWSGI does (libc ``fork()``, no Python fork hooks) while a
    thread runs: the child still lists it, and the dump refuses to read stacks."""
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, args=(30,), name="parent-thread")
    t.start()
    read_fd, write_fd = os.pipe()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pid = libc.fork()
        if pid == 0:  # the child: report and leave at once
            try:
                ghosts = [g.name for g in ghost_threads()]
                report = process_report(
                    role="worker",
                    worker_id=1,
                )
                out = json.dumps({"ghosts": ghosts, "report": report})
            except BaseException as err:  # pragma: no cover - shown by the parent
                out = json.dumps({"error": repr(err)})
            os.write(write_fd, out.encode())
            os._exit(0)
        os.close(write_fd)
        data = b""
        while chunk := os.read(read_fd, 65536):
            data += chunk
        os.waitpid(pid, 0)
    finally:
        stop.set()
        t.join()
        os.close(read_fd)
    result = json.loads(data)
    assert result["ghosts"] == ["parent-thread"]
    assert result["report"]["status"] == "unsafe"
    assert "py-call-uwsgi-fork-hooks = true" in result["report"]["error"]
    assert result["report"]["threads"] == []
    assert ghost_threads() == []  # and none here, in the parent


def test_frame_entries_are_shared_but_locals_stay_per_thread() -> None:
    """The snapshot builds one entry per code and line and shares it between
    stacks; with locals, each stack gets its own copies (docs/performance.md)."""
    import json as _json

    from flask_utd.agent.frame_locals import LocalsRequest
    from flask_utd.agent.snapshot import thread_reports

    release = threading.Event()
    ready = threading.Barrier(3)

    def park(label: str) -> None:
        ready.wait()
        release.wait()

    parked = [
        threading.Thread(target=park, args=(f"label-{i}",), daemon=True)
        for i in range(2)
    ]
    idents: set[int | None] = set()

    def park_frames(threads: list[Thread]) -> list[Frame]:
        return [
            next(f for f in t["frames"] if f["function"] == "park")
            for t in threads
            if t["ident"] in idents
        ]

    for thread in parked:
        thread.start()
    idents = {t.ident for t in parked}
    ready.wait()
    # Past the barrier, each thread still has a line to go: wait for both.
    wait_for(
        lambda: (
            [f["code"] for f in park_frames(thread_reports()[0])]
            == ["release.wait()"] * 2
        )
    )
    try:
        plain, _ = thread_reports()
        with_locals, _ = thread_reports(LocalsRequest(10, "builtin", 2.0))
    finally:
        release.set()

    first, second = park_frames(plain)
    assert first == second and "locals" not in first
    first, second = park_frames(with_locals)
    assert {first["locals"]["label"], second["locals"]["label"]} == {
        "'label-0'",
        "'label-1'",
    }
    # A later snapshot without locals is not polluted by the earlier one.
    assert all("locals" not in f for t in plain for f in t["frames"])
    _json.dumps(plain)


def test_threads_starting_and_ending_are_never_taken_for_ghosts() -> None:
    """Short-lived threads come and go while the dump looks: none is a ghost
    (which would make the whole process report "unsafe")."""
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            t = threading.Thread(target=lambda: None)
            t.start()
            t.join()

    spinners = [threading.Thread(target=churn, daemon=True) for _ in range(2)]
    for spinner in spinners:
        spinner.start()
    try:
        found = [g.name for _ in range(300) for g in ghost_threads()]
    finally:
        stop.set()
        for spinner in spinners:
            spinner.join(10)
    assert found == []


# A dump with the garbage collector about to free a threading.local: on Python
# 3.11, sys._current_frames() allocates while holding the lock on the thread
# list, the collection it triggers frees the local, whose clean-up takes the same
# lock, and the whole process hangs (the GIL is held throughout).
GC_DURING_DUMP = """
import gc, json, threading
from flask_utd.agent.snapshot import process_report
from flask_utd.core.report import Frame
from flask_utd.core.report import Thread

release = threading.Event()
for n in range(50):
    threading.Thread(target=release.wait, daemon=True).start()

class Holder:
    pass

def garbage():
    holder = Holder()
    holder.me = holder
    holder.local = threading.local()
    holder.local.value = 1

gc.collect()
gc.set_threshold(1)
for _ in range(20):
    garbage()
    report = process_report(role="process", worker_id=None)
gc.set_threshold(700)
print(json.dumps({"status": report["status"], "threads": len(report["threads"])}))
release.set()
"""


@pytest.mark.parametrize("version", SUPPORTED)
def test_a_dump_survives_a_collection_that_frees_a_thread_local(
    version: str,
) -> None:
    python = Path(need_uwsgi(version)).parent / "python"
    done = subprocess.run(
        [str(python), "-c", GC_DURING_DUMP],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "ok" and result["threads"] >= 51
