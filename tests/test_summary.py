"""The summary: stuck requests oldest first, identical stacks grouped."""

from __future__ import annotations

from typing import Any

from flask_utd.core.render import page_context
from flask_utd.core.render import render_text
from flask_utd.core.report import Frame
from flask_utd.core.report import Own
from flask_utd.core.report import Report
from flask_utd.core.report import Request
from flask_utd.core.report import Thread
from flask_utd.core.summary import app_frame
from flask_utd.core.summary import is_app_file
from flask_utd.core.summary import summarize

LIB = "/usr/lib/python3.11"
SITE = "/srv/venv/lib/python3.11/site-packages"
WORKER: list[Frame] = [
    {
        "file": f"{LIB}/threading.py",
        "line": 995,
        "function": "_bootstrap",
        "code": None,
    },
    {"file": f"{SITE}/flask/app.py", "line": 1478, "function": "wsgi_app", "code": "x"},
    {"file": "/srv/shop/views.py", "line": 25, "function": "checkout", "code": "pay()"},
    {"file": "/srv/shop/payment.py", "line": 9, "function": "pay", "code": "s.recv(1)"},
    {"file": f"{SITE}/requests/api.py", "line": 59, "function": "get", "code": "y"},
    {"file": f"{LIB}/socket.py", "line": 706, "function": "readinto", "code": "z"},
]
IDLE: list[Frame] = [
    {
        "file": f"{LIB}/threading.py",
        "line": 995,
        "function": "_bootstrap",
        "code": None,
    },
    {"file": f"{LIB}/threading.py", "line": 324, "function": "wait", "code": "w"},
]


def _thread(
    ident: int,
    frames: list[Frame],
    elapsed: float | None = None,
    wait: str | None = "io-socket",
    is_agent: bool = False,
) -> Thread:
    request: Request | None = None
    if elapsed is not None:
        request = {
            "method": "POST",
            "path": f"/checkout/{ident}",
            "endpoint": "checkout",
            "request_id": f"req-{ident}",
            "started_at": "2026-01-01T00:00:00.000+00:00",
            "elapsed_s": elapsed,
        }
    return {
        "ident": ident,
        "native_id": ident,
        "name": f"t{ident}",
        "daemon": False,
        "is_agent": is_agent,
        "request": request,
        "wait": wait,
        "wait_frame": len(frames) - 1,
        "os_state": "S",
        "wchan": None,
        "lock_owner": None,
        "frames": frames,
    }


def _report() -> Report:
    return {
        "schema": "flask-utd/1",
        "generated_at": "2026-01-01T00:00:40.000+00:00",
        "host": "h",
        "instance": "100",
        "processes": [
            {
                "pid": 100,
                "role": "master",
                "worker_id": None,
                "status": "ok",
                "error": None,
                "threads": [_thread(1, IDLE, wait="waiting-condition")],
            },
            {
                "pid": 101,
                "role": "worker",
                "worker_id": 1,
                "status": "ok",
                "error": None,
                "threads": [
                    _thread(11, WORKER, 12.5),
                    _thread(12, WORKER, 2.0),
                    _thread(13, IDLE, wait="waiting-condition"),
                    _thread(14, IDLE, wait="running", is_agent=True),
                ],
            },
            {
                "pid": 102,
                "role": "worker",
                "worker_id": 2,
                "status": "ok",
                "error": None,
                "threads": [_thread(21, WORKER, 30.25), _thread(22, WORKER, 7.0)],
            },
            {
                "pid": 103,
                "role": "worker",
                "worker_id": 3,
                "status": "timeout",
                "error": "did not answer",
                "threads": [],
            },
        ],
    }


def test_stuck_requests_oldest_first_with_their_app_frame() -> None:
    summary = summarize(_report(), 5.0)
    stuck = summary["stuck_requests"]
    assert [s["elapsed_s"] for s in stuck] == [30.25, 12.5, 7.0]  # 2.0 is not stuck
    first = stuck[0]
    assert (first["pid"], first["role"], first["worker_id"]) == (102, "worker", 2)
    assert (first["thread"], first["ident"]) == ("t21", 21)
    assert (first["method"], first["path"], first["endpoint"]) == (
        "POST",
        "/checkout/21",
        "checkout",
    )
    assert first["request_id"] == "req-21"
    # The innermost frame of the app: not socket.py, not requests in site-packages.
    assert first["app_frame"] == {
        "file": "/srv/shop/payment.py",
        "line": 9,
        "function": "pay",
        "code": "s.recv(1)",
    }
    assert summarize(_report(), 0)["stuck_requests"][-1]["elapsed_s"] == 2.0


def test_identical_stacks_are_grouped_across_processes() -> None:
    summary = summarize(_report(), 5.0)
    assert summary["processes"] == 4 and summary["answered"] == 3
    groups = summary["stack_groups"]
    assert [g["count"] for g in groups] == [4, 2]  # the agent thread is left out
    workers = groups[0]
    assert workers["processes"] == 2 and workers["frames"] == WORKER
    assert [(t["pid"], t["ident"]) for t in workers["threads"]] == [
        (101, 11),
        (101, 12),
        (102, 21),
        (102, 22),
    ]
    assert groups[1]["processes"] == 2  # master and worker 1, both idle
    assert summary["threads_by_state"] == {"io-socket": 4, "waiting-condition": 2}


def test_text_opens_with_every_request_in_progress_then_groups_then_the_dump() -> None:
    report = _report()
    report["summary"] = summarize(report, 5.0)
    text = render_text(report)
    missing = text.index(
        "1 of 4 processes did not answer (1 timeout): their requests are not listed"
    )
    head = text.index("4 requests in progress, 3 stuck (older than 5 s), oldest first:")
    groups = text.index("4 threads in 2 workers: io-socket at /srv/shop/payment.py")
    full = text.index("Full dump:")
    assert missing < head < groups < full
    lines = text[head:groups].splitlines()
    assert lines[1].startswith("  stuck   30.2 s  POST /checkout/21 (checkout) in")
    assert 'in worker 2 (pid 102), thread "t21", io-socket' in lines[1]
    assert "request id req-21" in lines[2]
    assert "at /srv/shop/payment.py, line 9, in pay: s.recv(1)" in lines[3]
    assert lines[4].startswith("  stuck   12.5 s") and lines[7].startswith("  stuck")
    # The request under the threshold is listed too, last, not marked.
    assert lines[10].startswith("           2.0 s  POST /checkout/12 (checkout)")
    assert "2 threads in 2 processes: waiting-condition" in text
    assert "Threads by state: 4 io-socket, 2 waiting-condition" in text
    assert "Serving: POST /checkout/21 (checkout) for 30.2 s" in text[full:]


def test_requests_under_the_threshold_are_listed_not_called_none() -> None:
    """The requests of flaskr held by sqlite's 5 s busy timeout, at 4.4 s: in
    progress, not stuck, and said so."""
    report = _report()
    report["summary"] = summarize(report, 60)
    text = render_text(report)
    head = text.split("Threads by state")[0]
    assert "4 requests in progress, oldest 30.2 s, none stuck (older than 60 s):" in (
        head
    )
    assert head.count("POST /checkout/") == 4 and "  stuck " not in head
    assert "No stuck" not in text and "No request" not in text
    # One request, then none.
    for process in report["processes"]:
        process["threads"] = [t for t in process["threads"] if t["ident"] == 12]
    report["summary"] = summarize(report, 5.0)
    assert "1 request in progress for 2.0 s, not stuck (older than 5 s):" in (
        render_text(report)
    )
    for process in report["processes"]:
        process["threads"] = []
    report["summary"] = summarize(report, 5.0)
    assert "\nNo request in progress.\n" in render_text(report)


def test_nothing_read_is_never_no_stuck_requests() -> None:
    report = _report()
    for process in report["processes"]:
        process["status"] = "refused" if process["pid"] == 100 else "timeout"
        process["error"] = "did not answer"
        process["threads"] = []
    report["summary"] = summarize(report, 5.0)
    text = render_text(report)
    lines = text.splitlines()
    assert lines[1] == "4 process(es), 0 answered"
    assert lines[3] == (
        "Nothing could be read: none of the 4 processes answered (1 refused,"
        " 3 timeout), so nothing is known about the requests in progress or stuck."
    )
    assert lines[4] == (
        "What to do: run this command as the server's user (or root); try again,"
        " or raise --timeout (UTD_TIMEOUT): a thread may hold the GIL in C code."
        " Each process below says why."
    )
    assert "No stuck" not in text and "No request" not in text
    assert "Threads by state" not in text
    # The page says the same.
    assert page_context(report)["headline"] == lines[3:5]
    report["processes"] = []
    report["summary"] = summarize(report, 5.0)
    assert "Nothing could be read: no process of this server instance" in (
        render_text(report)
    )


def test_a_call_is_named_in_the_requests_and_the_state() -> None:
    report = _report()
    for process in report["processes"]:
        for thread in process["threads"]:
            if thread["request"]:
                thread["wait"] = "in-call"
                thread["call"] = "sqlite3.Connection.execute"
    report["summary"] = summarize(report, 5.0)
    text = render_text(report)
    assert 'thread "t21", in-call (sqlite3.Connection.execute)' in text
    assert "4 threads in 2 workers: in-call (sqlite3.Connection.execute) at" in text
    assert "State: in-call (sqlite3.Connection.execute), OS state S" in text
    assert "Threads by state: 4 in-call, 2 waiting-condition" in text
    assert report["summary"]["stuck_requests"][0]["call"] == (
        "sqlite3.Connection.execute"
    )


def _own_threads_report() -> Report:
    report = _report()
    threads = report["processes"][1]["threads"]
    marks: tuple[tuple[int, Own], ...] = ((15, "admin"), (16, "collector"))
    for ident, own in marks:
        thread = _thread(ident, IDLE, wait="waiting-condition")
        thread["own"] = own
        threads.append(thread)
    threads[3]["own"] = "agent"
    return report


def test_flask_utds_own_threads_are_one_line_each_unless_asked_for() -> None:
    report = _own_threads_report()
    text = render_text(report)
    full = text.split("Full dump:")[1]
    for name, what in (
        ("t14", "flask-utd agent"),
        ("t15", "flask-utd admin listener"),
        ("t16", "collecting this dump"),
    ):
        (line,) = [x for x in full.splitlines() if x.startswith(f'Thread "{name}"')]
        assert line.endswith(f"{what}): stack not shown (--all-threads)"), line
        after = full.split(line)[1].lstrip("\n")
        assert not after.startswith("State:") and not after.startswith("Stack")
    # The app's threads keep their stacks; asked for, so do flask-utd's own.
    assert full.count("Stack (most recent call last):") == 6
    everything = render_text(report, all_threads=True)
    assert "stack not shown" not in everything
    assert everything.split("Full dump:")[1].count("Stack (most recent call") == 9
    assert 'Thread "t15" (ident 15, native id 15, flask-utd admin listener)' in (
        everything
    )


def test_what_belongs_to_the_app() -> None:
    assert is_app_file("/srv/shop/views.py")
    for path in (
        f"{LIB}/threading.py",
        "/usr/local/lib/python3.13t/queue.py",
        f"{SITE}/werkzeug/serving.py",
        "/home/me/src/flask/src/flask/app.py",  # a framework from a source tree
        "/work/flask-utd/flask_utd/snapshot.py",
        "<frozen importlib._bootstrap>",
    ):
        assert not is_app_file(path), path
    # An app installed as a package is found when nothing else is the app's.
    installed: list[Frame] = [
        {"file": f"{SITE}/flask/app.py", "line": 1, "function": "a", "code": None},
        {"file": f"{SITE}/shop/views.py", "line": 2, "function": "b", "code": None},
        {"file": f"{LIB}/time.py", "line": 3, "function": "c", "code": None},
    ]
    found = app_frame(installed)
    assert found is not None and found["function"] == "b"
    assert app_frame(IDLE) is None


def test_flask_utds_own_threads_are_noise_by_their_mark() -> None:
    from flask_utd.core.render import is_own
    from flask_utd.core.render import page_context

    def thread(ident: int, own: Own | None) -> Thread:
        # Frames that look like flask-utd's own: only the mark counts.
        frames: list[Frame] = [
            {
                "file": f"{SITE}/flask_utd/core/collector.py",
                "line": 1,
                "function": "collect",
                "code": None,
            }
        ]
        marked = _thread(ident, frames, wait=None, is_agent=own == "agent")
        marked["own"] = own
        return marked

    report: Report = {
        "schema": "flask-utd/1",
        "generated_at": "2026-01-01T00:00:00.000+00:00",
        "host": "h",
        "processes": [
            {
                "pid": 1,
                "role": "worker",
                "worker_id": 1,
                "status": "ok",
                "error": None,
                "threads": [
                    thread(1, None),
                    thread(2, "agent"),
                    thread(3, "admin"),
                    thread(4, "collector"),
                ],
            }
        ],
    }
    (process,) = page_context(report)["processes"]
    states = {t["ident"]: (t["noise"], t["state"]) for t in process["threads"]}
    assert states[1][0] is False
    assert states[2] == (True, "flask-utd agent")
    assert states[3] == (True, "flask-utd admin listener")
    assert states[4] == (True, "collecting this dump")
    assert not is_own({"frames": []}) and is_own({"is_agent": True})


GREEN: list[Frame] = [
    {"file": f"{SITE}/gevent/baseserver.py", "line": 34, "function": "_handle"},
    {"file": f"{SITE}/flask/app.py", "line": 1478, "function": "wsgi_app", "code": "x"},
    {"file": "/srv/shop/views.py", "line": 40, "function": "report", "code": "q()"},
    {"file": f"{SITE}/gevent/hub.py", "line": 166, "function": "sleep", "code": "w"},
]
SPIN: list[Frame] = [
    *GREEN[:2],
    {"file": "/srv/shop/views.py", "line": 70, "function": "spin"},
]
HUB: list[Frame] = [
    {"file": f"{SITE}/gevent/hub.py", "line": 647, "function": "run", "code": "r"}
]


def _green_worker(pid: int, *, blocked: bool) -> Any:  # a Process, built loosely
    """A gevent worker: its main thread, two greenlets stuck in the same line,
    its hub, and (``blocked``) a greenlet spinning on the thread."""
    main = dict(_thread(1, SPIN if blocked else HUB, wait="running"), kind="thread")
    sleeping = [
        dict(_thread(100 + i, GREEN, 9.0, "sleeping"), kind="greenlet", native_id=None)
        for i in range(2)
    ]
    hub = dict(_thread(200, HUB, wait="io-select"), kind="greenlet", hub=True)
    hub["idle_greenlets"] = 1000
    entries = [main, *sleeping, hub]
    if blocked:
        spinner = dict(_thread(300, SPIN, 3.0, "running"), kind="greenlet")
        spinner.update(running=True, blocking_hub={"for_s": 3.0, "since": "t0"})
        hub.update(blocked_by=300, blocked_for_s=3.0)
        entries.append(spinner)
    for entry in entries[1:]:
        entry["thread_ident"] = 1
    return {
        "pid": pid,
        "role": "worker",
        "worker_id": pid - 10,
        "status": "ok",
        "error": None,
        "threads": entries,
    }


def test_greenlets_grouped_across_workers_and_a_blocked_hub_first() -> None:
    report: Report = {
        "schema": "flask-utd/1",
        "generated_at": "2026-01-01T00:00:10+00:00",
        "host": "h",
        "processes": [
            _green_worker(11, blocked=True),
            _green_worker(12, blocked=False),
        ],
    }
    summary = summarize(report, 5.0)
    # The blocked hub first: which greenlet, and the 1,000 idle ones, the hub and
    # the two sleeping greenlets wait on it.
    (blocked,) = summary["blocked_hubs"]
    assert (blocked["pid"], blocked["greenlet"], blocked["for_s"]) == (11, 300, 3.0)
    assert blocked["waiting"] == 1000 + 3
    assert blocked["app_frame"]["function"] == "spin"
    # Identical greenlet stacks grouped across both workers.
    group = next(g for g in summary["stack_groups"] if g["frames"] == GREEN)
    assert (group["count"], group["processes"]) == (4, 2)
    assert {t["kind"] for t in group["threads"]} == {"greenlet"}
    # Worker 11's main thread runs the spinner: counted once, as the greenlet.
    assert sum(1 for g in summary["stack_groups"] if g["frames"] == SPIN) == 1
    assert next(g for g in summary["stack_groups"] if g["frames"] == SPIN)["count"] == 1
    assert [s["kind"] for s in summary["stuck_requests"]] == ["greenlet"] * 4
    report["summary"] = summary
    text = render_text(report)
    assert text.index("Blocked hubs") < text.index("requests in progress, 4 stuck")
    assert "4 greenlets in 2 workers: sleeping" in text
    assert "1000 idle greenlets of the server" in text
    # Greenlets right under their thread, the blocking one first.
    dump = text[text.index("=== worker 1 ") : text.index("=== worker 2 ")]
    order = [
        line.strip()
        for line in dump.splitlines()
        if line.strip()[:6] in ("Thread", "Greenl")
    ]
    assert order[0].startswith('Thread "t1"')
    assert order[1].startswith('Greenlet "t300"')
    assert "which runs on this thread (below)" in dump
    titles = [line for line in dump.splitlines() if 'Greenlet "' in line]
    assert titles and all(line.startswith("    Greenlet") for line in titles)
