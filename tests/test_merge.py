"""``merge``: reports of several hosts in one, its refusals, and ``--format jsonl``
(the servers themselves are in tests/test_fleet.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from demo_app.server import ROOT
from flask_utd import ReportError
from flask_utd.core.jsonl import render_jsonl
from flask_utd.core.merge import load_reports
from flask_utd.core.merge import merge_reports
from flask_utd.core.page import render_page
from flask_utd.core.render import page_context
from flask_utd.core.render import render_text
from flask_utd.core.report import Frame
from flask_utd.core.report import Process
from flask_utd.core.report import Report
from flask_utd.core.report import Request
from flask_utd.core.report import Thread
from flask_utd.core.summary import summarize

APP = "/srv/shop/views.py"
LIB = "/usr/lib/python3.11"
BOOT: Frame = {"file": f"{LIB}/threading.py", "line": 995, "function": "_bootstrap"}
STUCK: list[Frame] = [
    {**BOOT, "code": None},
    {"file": APP, "line": 25, "function": "checkout", "code": "pay()"},
    {"file": "/srv/shop/payment.py", "line": 9, "function": "pay", "code": "s.recv(1)"},
]  # fmt: skip
IDLE: list[Frame] = [
    {**BOOT, "code": None},
    {"file": f"{LIB}/threading.py", "line": 324, "function": "wait", "code": "w"},
]  # fmt: skip


def thread(ident: int, frames: list[Frame], elapsed: float | None = None,
           name: str = "uWSGIWorker1Core0") -> Thread:  # fmt: skip
    request: Request | None = None
    if elapsed is not None:
        request = {
            "method": "POST",
            "path": "/checkout",
            "endpoint": "checkout",
            "request_id": None,
            "started_at": "2026-01-01T00:00:00.000+00:00",
            "elapsed_s": elapsed,
        }
    return {
        "ident": ident,
        "native_id": ident + 1,
        "name": name,
        "daemon": False,
        "is_agent": False,
        "request": request,
        "wait": "io-socket" if elapsed is not None else "waiting-condition",
        "frames": frames,
    }


def report(host: str, stuck: list[float], slow_after: float = 5.0) -> Report:
    """A report of one host: master pid 1, workers pid 7 and 8 (the same pids on
    every host, as in containers); a worker per stuck request, then idle ones."""
    workers: list[Process] = []
    for i, pid in enumerate((7, 8)):
        frames, elapsed = (STUCK, stuck[i]) if i < len(stuck) else (IDLE, None)
        workers.append({
            "pid": pid, "role": "worker", "worker_id": i + 1, "status": "ok",
            "error": None, "threads": [thread(100 + i, frames, elapsed)],
        })  # fmt: skip
    made: Report = {
        "schema": "flask-utd/1",
        "generated_at": "2026-01-01T00:00:40.000+00:00",
        "host": host,
        "instance": "1",
        "elapsed_s": 0.01,
        "processes": [
            {
                "pid": 1,
                "role": "master",
                "worker_id": None,
                "status": "ok",
                "error": None,
                "threads": [thread(99, IDLE, name="MainThread")],
            },
            *workers,
        ],  # fmt: skip
        "unlisted": [],
    }
    made["summary"] = summarize(made, slow_after)
    return made


def fleet() -> list[Report]:
    return [
        report("pod-a", [12.0, 30.0]),
        report("pod-b", [3.0], slow_after=2.0),
        report("pod-c", []),
    ]


def test_stuck_requests_of_every_host_first_and_stacks_grouped_across_hosts() -> None:
    merged = merge_reports(fleet())
    assert merged["schema"] == "flask-utd/1"
    assert [(s["host"], s["instance"]) for s in merged["merged_from"]] == [
        ("pod-a", "1"),
        ("pod-b", "1"),
        ("pod-c", "1"),
    ]
    assert len(merged["processes"]) == 9
    assert {(p["host"], p["pid"]) for p in merged["processes"]} == {
        (h, pid) for h in ("pod-a", "pod-b", "pod-c") for pid in (1, 7, 8)
    }
    summary = merged["summary"]
    # The smallest threshold of the three: pod-b's 3 s request is stuck.
    assert summary["slow_after"] == 2.0
    assert [
        (s["host"], s["pid"], s["elapsed_s"]) for s in summary["stuck_requests"]
    ] == [
        ("pod-a", 8, 30.0),
        ("pod-a", 7, 12.0),
        ("pod-b", 7, 3.0),
    ]
    (stuck_group,) = [g for g in summary["stack_groups"] if g["frames"] == STUCK]
    assert (stuck_group["count"], stuck_group["processes"], stuck_group["hosts"]) == (
        3,
        3,
        2,
    )
    idle = [g for g in summary["stack_groups"] if g["frames"] == IDLE]
    assert idle[0]["hosts"] == 3

    text = render_text(merged)
    assert text.startswith("flask-utd thread dump merged from 3 reports at ")
    assert "  instance 1 on pod-b, taken 2026-01-01T00:00:40.000+00:00" in text
    assert "9 process(es), 9 answered" in text
    lines = text.splitlines()
    first = lines.index(
        "3 requests in progress, 3 stuck (older than 2 s), oldest first:"
    )
    assert "in worker 2 (pid 8) on pod-a, instance 1," in lines[first + 1]
    assert "in worker 1 (pid 7) on pod-b, instance 1," in lines[first + 5]
    assert (
        "  3 threads in 3 workers on 2 hosts: io-socket at /srv/shop/payment.py,"
        " line 9, in pay: s.recv(1)" in lines
    )
    assert '"uWSGIWorker1Core0" (pid 7 on pod-b)' in text
    assert "=== worker 1 (pid 7) on pod-c, instance 1: ok" in lines
    # The same for an explicit threshold.
    assert merge_reports(fleet(), slow_after=20)["summary"]["stuck_requests"] == [
        merge_reports(fleet())["summary"]["stuck_requests"][0]
    ]


def test_html_labels_every_process_by_host() -> None:
    merged = merge_reports(fleet())
    context = page_context(merged)
    # Same pid and thread ident on two hosts: only the stuck one is marked.
    stuck = {(r["host"], r["pid"]) for r in context["requests"] if r["stuck"]}
    assert stuck == {("pod-a", 7), ("pod-a", 8), ("pod-b", 7)}
    page = render_page(merged)
    assert "<h1>Thread dump merged from 3 reports</h1>" in page
    assert "worker 1 (pid 7) on pod-b, instance 1" in page
    assert "(pid 7) on pod-b, instance 1</td>" in page
    assert page.count('<section class="process"') == 9
    # Escaped like the endpoint's page.
    evil = fleet()
    evil[0]["host"] = "<script>x</script>"
    assert "<script>x" not in render_page(merge_reports(evil))


def test_a_merged_report_merges_again_and_an_instance_only_once() -> None:
    first = merge_reports(fleet()[:2])
    again = merge_reports([json.loads(json.dumps(first)), fleet()[2]])
    assert [s["host"] for s in again["merged_from"]] == ["pod-a", "pod-b", "pod-c"]
    assert {p["host"] for p in again["processes"]} == {"pod-a", "pod-b", "pod-c"}
    with pytest.raises(ReportError, match="instance 1 on pod-a is already in a.json"):
        merge_reports([fleet()[0], first], names=["a.json", "ab.json"])
    with pytest.raises(ReportError, match="no report to merge"):
        merge_reports([])


def test_several_reports_in_one_input() -> None:
    text = "\n".join(json.dumps(r) for r in fleet()) + "\n"
    assert [r["host"] for r in load_reports(text, "-")] == ["pod-a", "pod-b", "pod-c"]
    indented = json.dumps(fleet()[0], indent=2) + json.dumps(fleet()[1], indent=2)
    assert len(load_reports(indented, "-")) == 2


def test_jsonl_one_object_per_thread_with_its_process() -> None:
    one = fleet()[0]
    one["processes"].append(
        {"pid": 9, "role": "worker", "worker_id": 3, "status": "timeout",
         "error": "process 9 did not answer", "threads": []}
    )  # fmt: skip
    lines = render_jsonl(one).splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 4  # three threads, and the process that did not answer
    stuck = records[2]
    assert stuck == {
        "time": "2026-01-01T00:00:40.000+00:00",
        "host.name": "pod-a",
        "flask_utd.instance": "1",
        "process.pid": 8,
        "flask_utd.role": "worker",
        "flask_utd.worker_id": 2,
        "flask_utd.status": "ok",
        "thread.id": 101,
        "thread.name": "uWSGIWorker1Core0",
        "flask_utd.native_id": 102,
        "flask_utd.daemon": False,
        "flask_utd.agent": False,
        "flask_utd.wait": "io-socket",
        "code.function": "pay",
        "code.filepath": "/srv/shop/payment.py",
        "code.lineno": 9,
        "code.stacktrace": stuck["code.stacktrace"],
        "http.request.method": "POST",
        "url.path": "/checkout",
        "flask_utd.endpoint": "checkout",
        "flask_utd.request_id": None,
        "flask_utd.started_at": "2026-01-01T00:00:00.000+00:00",
        "flask_utd.elapsed_s": 30.0,
        "flask_utd.stuck": True,
        "message": "stuck POST /checkout for 30.0 s in worker 2 (pid 8) on pod-a,"
        " thread 'uWSGIWorker1Core0', io-socket at /srv/shop/payment.py:9 in pay",
    }
    assert stuck["code.stacktrace"].splitlines()[-2:] == [
        '  File "/srv/shop/payment.py", line 9, in pay',
        "    s.recv(1)",
    ]
    assert "http.request.method" not in records[0]
    silent = records[3]
    assert silent["flask_utd.status"] == "timeout" and "thread.id" not in silent
    assert silent["flask_utd.error"] == "process 9 did not answer"
    # A merged report: each line says its own host.
    merged = merge_reports(fleet())
    hosts = [
        json.loads(line)["host.name"] for line in render_jsonl(merged).splitlines()
    ]
    assert hosts == ["pod-a"] * 3 + ["pod-b"] * 3 + ["pod-c"] * 3


# -- the commands -------------------------------------------------------------------


def lean(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask_utd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


BAD = {
    "not JSON": ("{'schema': 1", "not JSON (Expecting property name enclosed"),
    "another schema": (
        json.dumps({"schema": "flask-utd/2", "host": "h", "processes": []}),
        "schema 'flask-utd/2', not 'flask-utd/1': reports of different schema"
        " versions are not merged",
    ),
    "empty": ("", "empty, no report in it"),
    "blank": ("\n \n", "empty, no report in it"),
    "not a report": ('{"processes": []}', 'not a flask-utd report (no "schema" field)'),
    "cut short": (
        '{"schema": "flask-utd/1", "host": "h"}',
        "a flask-utd/1 report without a host or a list",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    text, message = BAD[case]
    good = tmp_path / "good.json"
    good.write_text(json.dumps(fleet()[0]))
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    for args, stdin, name in (
        ([str(good), str(bad)], "", str(bad)),
        ([str(good), "-"], text, "-"),
    ):
        out = lean("merge", *args, stdin=stdin)
        assert out.returncode == 2, out
        assert out.stdout == ""
        assert out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith(f"Error: {name}: {message}"), out.stderr


def test_reports_of_two_schema_versions_are_not_mixed(tmp_path: Path) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(fleet()[0]))
    new.write_text(json.dumps(dict(fleet()[1], schema="flask-utd/2")))
    out = lean("merge", str(old), str(new), "--format", "json")
    assert out.returncode == 2 and out.stdout == ""
    assert f"Error: {new}: schema 'flask-utd/2'" in out.stderr


def test_lean_merge_formats(tmp_path: Path) -> None:
    paths = []
    for r in fleet():
        path = tmp_path / f"{r['host']}.json"
        path.write_text(json.dumps(r))
        paths.append(str(path))
    out = lean("merge", *paths, "--format", "json")
    assert out.returncode == 0, out.stderr
    merged = json.loads(out.stdout)
    assert merged["schema"] == "flask-utd/1" and len(merged["processes"]) == 9
    out = lean("merge", "-", "--format=jsonl", stdin="".join(Path(p).read_text()
               for p in paths))  # fmt: skip
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 9
    assert "on 2 hosts" in lean("merge", *paths).stdout
    assert "merged from 3 reports" in lean("merge", *paths, "--format", "html").stdout
    assert lean("merge", "--help").stdout.startswith("usage: python -m flask_utd merge")
    out = lean("merge", *paths, "--format", "xml")
    assert out.returncode == 2
    assert "invalid choice: 'xml' (choose from" in out.stderr and "jsonl" in out.stderr


def test_flask_utd_merge(app: Flask, runner: Any, tmp_path: Path) -> None:
    paths = []
    for r in fleet():
        path = tmp_path / f"{r['host']}.json"
        path.write_text(json.dumps(r))
        paths.append(str(path))
    result = runner.invoke(args=["utd", "merge", *paths, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["processes"]) == 9
    result = runner.invoke(args=["utd", "merge", "-", "--slow-after", "20"],
                           input=Path(paths[0]).read_text())  # fmt: skip
    assert result.exit_code == 0 and "older than 20 s" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text("nope")
    result = runner.invoke(args=["utd", "merge", paths[0], str(bad)])
    assert result.exit_code == 2
    assert f"Error: {bad}: not JSON" in result.output


def test_flask_utd_merge_error_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("")
    out = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "tests.apps.plain", "utd", "merge",
         str(bad)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr == (
        f"Error: {bad}: empty, no report in it; take one with"
        " `python -m flask_utd dump --format json`.\n"
    )


def test_flask_utd_dump_format_jsonl(app: Flask, client: Any, runner: Any) -> None:
    client.get("/")  # the first request starts this process's agent
    result = runner.invoke(args=["utd", "dump", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    assert {r["process.pid"] for r in records} == {os.getpid()}
    assert any(r["thread.name"] == "utd-agent" and r["flask_utd.agent"]
               for r in records)  # fmt: skip
    me = next(r for r in records if r["thread.name"] == "MainThread")
    assert "in collect" in me["code.stacktrace"]
    result = runner.invoke(args=["utd", "dump", "--format", "xml"])
    assert result.exit_code == 2
