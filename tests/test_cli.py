"""``flask utd dump`` and ``python -m flask_utd dump``."""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask.testing import FlaskCliRunner

from demo_app.server import ROOT
from flask_utd import utd_bp
from flask_utd.core import lean
from flask_utd.core.formats import FORMATS
from tests.helpers import as_another_uid


def test_dump_prints_every_thread_innermost_last(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner
) -> None:
    client.get("/_utd/nothing-here")  # the first request starts this process's agent
    result = runner.invoke(args=["utd", "dump"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"process (pid {os.getpid()}): ok" in out
    assert 'Thread "utd-agent"' in out and "flask-utd agent" in out
    # This thread collects the dump: flask-utd's own, its stack on request.
    result = runner.invoke(args=["utd", "dump", "--all-threads"])
    assert "Stack (most recent call last):" in result.output
    me = result.output.split('Thread "MainThread"')[1].split("\nThread ")[0]
    assert me.index("in invoke") < me.index("in run_dump") < me.index("in collect")


def test_flask_utds_own_threads_are_one_line_unless_all_threads(
    app: Flask,
    client: FlaskClient,
    runner: FlaskCliRunner,
    socket_dir: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client.get("/")  # starts this process's agent
    folded = runner.invoke(args=["utd", "dump"]).output
    agent = [x for x in folded.splitlines() if x.startswith('Thread "utd-agent"')]
    assert len(agent) == 1
    assert agent[0].endswith("flask-utd agent): stack not shown (--all-threads)")
    assert ", collecting this dump): stack not shown (--all-threads)" in folded
    assert "in exposed_dump" not in folded and "in run_dump" not in folded
    full = runner.invoke(args=["utd", "dump", "--all-threads"]).output
    assert "stack not shown" not in full
    assert "in exposed_dump" in full and "in run_dump" in full

    # python -m flask_utd dump: the same option.
    for args, shown in (([], False), (["--all-threads"], True)):
        with pytest.raises(SystemExit) as exited:
            lean.main(["dump", "--socket-dir", socket_dir, *args])
        assert exited.value.code == 0
        out = capsys.readouterr().out
        assert ("in exposed_dump" in out) is shown
        assert ("stack not shown (--all-threads)" in out) is not shown


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
        assert "\nFull dump:\n" in result.output


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


def test_socket_dir_option_overrides_the_apps_setting(
    app: Flask, client: FlaskClient, socket_dir: str, tmp_path: Path
) -> None:
    """As docs/gunicorn.rst offers: ``flask utd dump --socket-dir DIR``, for a
    server whose directory the app's config does not name."""
    client.get("/")  # starts this process's agent, in socket_dir
    other = Flask("elsewhere")
    other.config.update(
        TESTING=True, SECRET_KEY="s", UTD_SOCKET_DIR=str(tmp_path / "empty")
    )
    other.register_blueprint(utd_bp)
    runner = other.test_cli_runner()
    assert "no running server found" in runner.invoke(args=["utd", "dump"]).output
    result = runner.invoke(args=["utd", "dump", "--socket-dir", socket_dir])
    assert result.exit_code == 0, result.output
    assert f"process (pid {os.getpid()}): ok" in result.output
    assert (
        "--socket-dir DIRECTORY" in runner.invoke(args=["utd", "dump", "--help"]).output
    )


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


#: What a command run as another user needs imported before it drops to that
#: user: here the standard library lies under /root, which nobody may read.
_IMPORTS = (
    "import os, sys, argparse, shutil, locale, gettext, pwd, json, tempfile\n"
    "import flask_utd.core.lean, flask_utd.core.render, flask_utd.core.summary\n"
)


def _as_nobody(command: str, socket_dir: str) -> subprocess.CompletedProcess[str]:
    if command == "lean":
        code = (
            f"{_IMPORTS}from flask_utd.core import lean\n# as nobody\n"
            "lean.main(['dump', '--socket-dir', sys.argv[1]])\n"
        )
    else:
        code = (
            f"{_IMPORTS}os.environ['DEMO_UTD_SOCKET_DIR'] = sys.argv[1]\n"
            "import tests.apps.plain\nfrom flask.cli import main\n# as nobody\n"
            "sys.argv = ['flask', '--app', 'tests.apps.plain', 'utd', 'dump']\n"
            "main()\n"
        )
    return as_another_uid(code, socket_dir)


@pytest.mark.parametrize("command", ["lean", "flask"])
def test_another_user_gets_one_line_naming_the_directory_and_its_owner(
    socket_dir: str, command: str
) -> None:
    """Not a PermissionError traceback: which directory, whose, what to do."""
    os.mkdir(os.path.join(socket_dir, str(os.getpid())), 0o700)
    out = _as_nobody(command, socket_dir)
    nobody = f"{pwd.getpwuid(65534).pw_name} (uid 65534)"
    assert (out.returncode, out.stdout) == (2, ""), out.stderr
    assert out.stderr == (
        f"Error: cannot read the socket directory {socket_dir}: it belongs to root"
        f" (uid 0), mode 700, and this command runs as {nobody}. The agents answer"
        " only the server's user and root: run this command as root (with sudo).\n"
    )


def test_the_directory_on_the_way_is_named(socket_dir: str) -> None:
    """A socket directory inside a private one (``$XDG_RUNTIME_DIR/flask-utd``,
    with ``/run/user/<uid>`` mode 700), owned by a user without a name."""
    inner = os.path.join(socket_dir, "flask-utd")
    os.mkdir(inner, 0o700)
    os.chown(socket_dir, 4242, 4242)
    out = _as_nobody("lean", inner)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(
        f"Error: cannot read the socket directory {inner}: {socket_dir}, on the way"
        " to it, belongs to uid 4242, mode 700, and this command runs as "
    )
    assert out.stderr.endswith(
        "run this command as uid 4242 or as root (sudo -u '#4242' ...).\n"
    )
