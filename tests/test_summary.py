"""The summary: stuck requests oldest first, identical stacks grouped."""

from __future__ import annotations

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


def test_text_opens_with_stuck_requests_then_groups_then_the_dump() -> None:
    report = _report()
    report["summary"] = summarize(report, 5.0)
    text = render_text(report)
    stuck = text.index("Stuck requests (older than 5 s), oldest first:")
    groups = text.index("4 threads in 2 workers: io-socket at /srv/shop/payment.py")
    full = text.index("Full dump:")
    assert stuck < groups < full
    lines = text[stuck:groups].splitlines()
    assert "30.2 s  POST /checkout/21 (checkout) in worker 2 (pid 102)" in lines[1]
    assert "12.5 s" in lines[4] and "7.0 s" in lines[7]
    assert "at /srv/shop/payment.py, line 9, in pay: s.recv(1)" in lines[3]
    assert "request id req-21" in lines[2]
    assert "2 threads in 2 processes: waiting-condition" in text
    assert "Threads by state: 4 io-socket, 2 waiting-condition" in text
    assert "Serving: POST /checkout/21 (checkout) for 30.2 s" in text[full:]


def test_no_stuck_requests_is_said() -> None:
    report = _report()
    report["summary"] = summarize(report, 60)
    assert "No stuck requests (older than 60 s)." in render_text(report)


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
