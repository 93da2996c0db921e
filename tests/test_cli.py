"""``flask utd dump`` and ``python -m flask_utd dump``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask.testing import FlaskCliRunner

from demo_app.server import ROOT
from flask_utd.core.formats import FORMATS


def test_dump_prints_every_thread_innermost_last(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner
) -> None:
    client.get("/_utd/nothing-here")  # the first request starts this process's agent
    result = runner.invoke(args=["utd", "dump"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"process (pid {os.getpid()}): ok" in out
    assert 'Thread "utd-agent"' in out and "flask-utd agent" in out
    assert "Stack (most recent call last):" in out
    # This thread is in the dump, outermost frame first, innermost last.
    me = out.split('Thread "MainThread"')[1].split("\nThread ")[0]
    assert me.index("in invoke") < me.index("in run_dump") < me.index("in collect")


def test_dump_json_and_pid(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner
) -> None:
    client.get("/")
    result = runner.invoke(args=["utd", "dump", "--json", "--pid", str(os.getpid())])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["schema"] == "flask-utd/1"
    assert [p["pid"] for p in report["processes"]] == [os.getpid()]
    for key in ("generated_at", "host"):
        assert report[key]
    result = runner.invoke(args=["utd", "dump", "--pid", "1"])
    assert result.exit_code == 2 and "no process 1" in result.output


def test_dump_format_json_and_its_alias_json_print_the_report_indented(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner
) -> None:
    client.get("/")
    for args in (["--format", "json"], ["--json"]):
        result = runner.invoke(args=["utd", "dump", *args, "--pid", str(os.getpid())])
        assert result.exit_code == 0, result.output
        assert result.output.startswith('{\n  "schema": "flask-utd/1",\n')
        report = json.loads(result.output)
        assert [p["pid"] for p in report["processes"]] == [os.getpid()]


def test_dump_format_text_is_the_default(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner
) -> None:
    client.get("/")
    for args in ([], ["--format", "text"]):
        result = runner.invoke(args=["utd", "dump", *args])
        assert result.exit_code == 0, result.output
        assert result.output.startswith("flask-utd thread dump of server instance")
        assert "Stack (most recent call last):" in result.output


def test_dump_format_html_prints_the_page(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner
) -> None:
    client.get("/")
    result = runner.invoke(args=["utd", "dump", "--format", "html"])
    assert result.exit_code == 0, result.output
    page = result.output
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert f"process (pid {os.getpid()})" in page and "utd-agent" in page
    assert "<script" not in page and "<link" not in page


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--format", "xml"],
            "Error: Invalid value for '--format': 'xml' is not one of "
            + ", ".join(f"'{name}'" for name in FORMATS)
            + ".",
        ),
        (["--json", "--format", "text"], "Error: --json is --format json:"),
        (["--json", "--format", "json"], "Error: --json is --format json:"),
    ],
)
def test_dump_format_usage_errors_exit_2(
    runner: FlaskCliRunner, args: list[str], error: str
) -> None:
    result = runner.invoke(args=["utd", "dump", *args])
    assert result.exit_code == 2
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert line.startswith(error), result.output


def test_exit_code_3_when_a_process_does_not_answer(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, socket_dir: str
) -> None:
    client.get("/")
    instance = os.path.join(socket_dir, str(os.getpid()))
    silent = socket.socket(socket.AF_UNIX)
    silent.bind(os.path.join(instance, "900009.sock"))
    silent.listen(1)
    try:
        result = runner.invoke(args=["utd", "dump", "--timeout", "0.3"])
    finally:
        silent.close()
    assert result.exit_code == 3
    assert "900009): timeout" in result.output
    assert f"(pid {os.getpid()}): ok" in result.output


def test_exit_code_2_when_no_server_runs(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["utd", "dump"])
    assert result.exit_code == 2
    assert "no running server found" in result.output


def _cli_env(socket_dir: str) -> dict[str, str]:
    return dict(os.environ, DEMO_UTD_SOCKET_DIR=socket_dir, PYTHONPATH=str(ROOT))


def test_cli_exits_promptly_although_the_app_left_threads(socket_dir: str) -> None:
    """The demo app starts a non-daemon thread at import; the command still ends."""
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "demo_app.app", "utd", "dump"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_cli_env(socket_dir),
        cwd=ROOT,
    )
    assert out.returncode == 2, out.stderr
    assert "no running server found" in out.stderr
    assert time.monotonic() - started < 60


def test_cli_processes_never_start_an_agent(socket_dir: str) -> None:
    for args in (["utd", "dump"], ["routes"], ["shell"]):
        subprocess.run(
            [sys.executable, "-m", "flask", "--app", "tests.apps.plain", *args],
            capture_output=True,
            timeout=60,
            env=_cli_env(socket_dir),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
    leftovers = [
        os.path.join(d, f) for d, _, files in os.walk(socket_dir) for f in files
    ]
    assert leftovers == []
