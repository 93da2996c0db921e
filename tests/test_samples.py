"""Samples: several dumps some time apart, and of every thread whether it moved
(``--samples N --interval S``, ``?samples=N``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from demo_app.server import ROOT
from flask_utd.core.render import page_context
from flask_utd.core.render import render_text
from flask_utd.core.report import Frame
from flask_utd.core.report import Report
from flask_utd.core.report import Request
from flask_utd.core.report import Thread
from flask_utd.core.samples import compare
from flask_utd.core.samples import merge_samples
from flask_utd.core.samples import stack_key
from flask_utd.core.summary import summarize
from flask_utd.ext.signing import make_token


def _frames(*places: tuple[str, int]) -> list[Frame]:
    return [
        {"file": f, "line": n, "function": f"f{n}", "code": None} for f, n in places
    ]


def test_compare_says_moved_and_for_how_long_on_the_same_line() -> None:
    still = stack_key(_frames(("a.py", 1), ("b.py", 2)))
    deeper = stack_key(_frames(("a.py", 1), ("b.py", 3)))
    assert compare([]) == (None, None)
    assert compare([(0.0, still)]) == (None, None)
    assert compare([(0.0, still), (1.0, still), (2.0, still)]) == (False, 2.0)
    # Moved, then stayed: moved, and on the same line since the move.
    assert compare([(0.0, deeper), (1.0, still), (2.0, still)]) == (True, 1.0)
    assert compare([(0.0, still), (1.0, deeper)]) == (True, 0.0)
    # Same innermost line under another caller: moved, same line all along.
    other_caller = stack_key(_frames(("c.py", 9), ("b.py", 2)))
    assert compare([(0.0, other_caller), (1.0, still)]) == (True, 1.0)


def _report(*threads: Thread, pid: int = 10) -> Report:
    return {
        "schema": "flask-utd/1",
        "generated_at": "2026-01-01T00:00:00+00:00",
        "host": "h",
        "instance": "1",
        "processes": [
            {
                "pid": pid,
                "role": "worker",
                "worker_id": 1,
                "status": "ok",
                "error": None,
                "threads": list(threads),
            }
        ],
    }


def _thread(ident: int, frames: list[Frame], **more: Any) -> Thread:
    thread: Thread = {
        "ident": ident,
        "native_id": ident + 1,
        "name": f"t{ident}",
        "daemon": False,
        "is_agent": False,
        "request": None,
        "frames": frames,
    }
    thread.update(more)  # type: ignore[typeddict-item]
    return thread


def _request(started: str, elapsed: float) -> Request:
    return {
        "method": "GET",
        "path": f"/{started}",
        "endpoint": None,
        "request_id": None,
        "started_at": started,
        "elapsed_s": elapsed,
    }


def test_merge_marks_every_thread_of_the_last_sample() -> None:
    stuck = _frames(("app.py", 5))
    r1 = _request("t1", 9.0)
    samples = [
        (
            0.0,
            _report(
                _thread(1, stuck, request=r1),
                _thread(2, _frames(("app.py", 7))),
                _thread(3, stuck, request=_request("old", 1.0)),
            ),
        ),
        (
            1.0,
            _report(
                _thread(1, stuck, request=r1),
                _thread(2, _frames(("app.py", 8))),
                # Same thread, a new request: not comparable with the old one.
                _thread(3, stuck, request=_request("new", 0.1)),
                _thread(4, stuck),
            ),
        ),
    ]
    report = merge_samples(samples, 1.0)
    by_ident = {t["ident"]: t for t in report["processes"][0]["threads"]}
    assert (by_ident[1]["moved"], by_ident[1]["same_line_s"]) == (False, 1.0)
    assert (by_ident[2]["moved"], by_ident[2]["same_line_s"]) == (True, 0.0)
    assert (by_ident[3]["moved"], by_ident[3]["same_line_s"]) == (None, None)
    assert (by_ident[4]["moved"], by_ident[4]["same_line_s"]) == (None, None)
    assert report["samples"] == {"count": 2, "interval_s": 1.0}
    json.dumps(report)  # plain data


def test_unmoved_requests_come_first_in_summary_text_and_page() -> None:
    report = _report(
        _thread(1, _frames(("app.py", 5)), request=_request("a", 30.0), moved=True),
        _thread(
            2,
            _frames(("app.py", 6)),
            request=_request("b", 8.0),
            moved=False,
            same_line_s=2.0,
        ),
        _thread(3, _frames(("app.py", 7)), moved=False, same_line_s=2.0),
    )
    report["samples"] = {"count": 3, "interval_s": 1.0}
    report["summary"] = summarize(report, 5.0)
    stuck = report["summary"]["stuck_requests"]
    # The younger request first: it did not move; the older one did.
    assert [s["ident"] for s in stuck] == [2, 1]
    assert stuck[0]["moved"] is False and stuck[0]["same_line_s"] == 2.0
    text = render_text(report)
    assert "3 samples 1 s apart" in text
    summary = text.split("Full dump:")[0]
    assert summary.index("GET /b") < summary.index("GET /a")
    assert "did not move between samples, on the same line for 2.0 s" in summary
    full = text.split("Full dump:")[1]
    assert full.index('Thread "t2"') < full.index('Thread "t1"')
    assert "Samples: moved between samples" in full
    page = page_context(report)
    assert [r["thread"] for r in page["requests"]] == ["t2", "t1"]
    assert [t["name"] for t in page["processes"][0]["threads"]][:2] == ["t2", "t1"]


def test_without_samples_nothing_changes_order_or_says_moved() -> None:
    report = _report(
        _thread(1, _frames(("app.py", 5)), request=_request("a", 30.0)),
        _thread(2, _frames(("app.py", 6)), request=_request("b", 8.0)),
    )
    report["summary"] = summarize(report, 5.0)
    assert [s["ident"] for s in report["summary"]["stuck_requests"]] == [1, 2]
    text = render_text(report)
    assert "Samples:" not in text and "samples" not in text.split("\n")[1]
    full = text.split("Full dump:")[1]
    assert full.index('Thread "t1"') < full.index('Thread "t2"')


# -- against this process's agent ---------------------------------------------------


@pytest.fixture
def two_requests(app: Flask, client: Any) -> Iterator[None]:
    """A request that sleeps (never moves) and one that goes deeper every 50 ms
    (always moves), both in flight in threads of this process."""
    release = threading.Event()

    @app.get("/still")
    def still() -> str:
        release.wait(30)
        return "still"

    def descend(depth: int) -> None:
        if depth and not release.wait(0.05):
            descend(depth - 1)

    @app.get("/busy")
    def busy() -> str:
        descend(400)
        return "busy"

    client.get("/")  # starts this process's agent
    threads = [
        threading.Thread(target=client.get, args=(path,), daemon=True)
        for path in ("/still", "/busy")
    ]
    for thread in threads:
        thread.start()
    yield
    release.set()
    for thread in threads:
        thread.join(10)


def _serving(report: dict[str, Any], path: str) -> dict[str, Any]:
    (thread,) = [
        t
        for p in report["processes"]
        for t in p["threads"]
        if (t.get("request") or {}).get("path") == path
    ]
    return thread


def test_cli_samples_tell_a_stuck_request_from_a_busy_one(
    two_requests: None, runner: Any
) -> None:
    started = time.monotonic()
    result = runner.invoke(
        args=["utd", "dump", "--json", "--samples", "3", "--interval", "0.3"]
    )
    took = time.monotonic() - started
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["samples"] == {"count": 3, "interval_s": 0.3}
    assert 0.6 <= took < 5, took
    still, busy = _serving(report, "/still"), _serving(report, "/busy")
    assert still["moved"] is False and still["same_line_s"] >= 0.5
    assert busy["moved"] is True
    stuck = report["summary"]["stuck_requests"]
    assert stuck == [] or stuck[0]["moved"] is False
    text = runner.invoke(args=["utd", "dump", "--samples", "2", "--interval", "0.2"])
    assert "2 samples 0.2 s apart" in text.output
    assert "did not move between samples" in text.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--samples", "0"], "--samples"),
        (["--samples", "51"], "--samples"),
        (["--interval", "0"], "--interval"),
        (["--interval", "61"], "--interval"),
    ],
)
def test_cli_sample_bounds(runner: Any, args: list[str], message: str) -> None:
    result = runner.invoke(args=["utd", "dump", *args])
    assert result.exit_code == 2 and message in result.output


def test_lean_command_samples(two_requests: None, socket_dir: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "flask_utd", "dump", "--socket-dir", socket_dir]
        + ["--json", "--samples", "2", "--interval", "0.3"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["samples"]["count"] == 2
    assert _serving(report, "/still")["moved"] is False
    bad = subprocess.run(
        [sys.executable, "-m", "flask_utd", "dump", "--samples", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "--samples" in bad.stderr


def test_endpoint_samples_and_their_bounds(two_requests: None, client: Any) -> None:
    token = make_token("test-secret", 60)
    started = time.monotonic()
    answer = client.get(f"/_utd/dump?token={token}&samples=2&interval=0.3")
    assert answer.status_code == 200, answer.data
    assert time.monotonic() - started >= 0.3
    report = answer.get_json()
    assert report["samples"] == {"count": 2, "interval_s": 0.3}
    assert _serving(report, "/still")["moved"] is False
    page = client.get(f"/_utd/dump?token={token}&samples=2&interval=0.2&format=html")
    assert page.status_code == 200 and b"unmoved" in page.data
    for query in ("samples=6", "samples=0", "samples=x", "interval=2.5", "interval=0"):
        refused = client.get(f"/_utd/dump?token={token}&{query}")
        assert refused.status_code == 400, query
        assert refused.get_json()["error"].startswith(query.split("=")[0])
    # Without samples the report says nothing of moving.
    plain = client.get(f"/_utd/dump?token={token}").get_json()
    assert "samples" not in plain
    assert "moved" not in _serving(plain, "/still")


def test_a_sample_is_taken_even_when_one_collection_is_slow(
    app: Flask, client: Any, socket_dir: str
) -> None:
    """A process that never answers makes each collection last its timeout:
    the next one starts at once, and the report still comes back."""
    import socket as sockets

    client.get("/")
    silent = sockets.socket(sockets.AF_UNIX)
    silent.bind(os.path.join(socket_dir, str(os.getpid()), "900009.sock"))
    silent.listen(1)
    try:
        from flask_utd.core.collector import collect_samples

        started = time.monotonic()
        report = collect_samples(
            socket_dir, str(os.getpid()), samples=2, interval=0.1, timeout=0.4
        )
        took = time.monotonic() - started
    finally:
        silent.close()
    # Each collection waits for the silent one until its deadline (0.3 s of
    # the 0.4: the rest is kept for the faulthandler fallback); the second
    # starts at once, not at 0.1 s.
    assert 0.55 <= took < 3, took
    statuses = {p["pid"]: p["status"] for p in report["processes"]}
    assert statuses[900009] == "timeout" and statuses[os.getpid()] == "ok"
    assert report["samples"]["count"] == 2
