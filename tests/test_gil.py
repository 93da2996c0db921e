"""A process whose thread holds the GIL: the report still comes back in time,
with that process marked ``timeout`` and its stacks taken by faulthandler."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from demo_app.server import children
from flask_utd.agent.lifecycle import start_agent
from flask_utd.agent.lifecycle import stop_agents
from flask_utd.core import fallback as faultdump
from flask_utd.core.collector import collect
from flask_utd.core.report import Process
from flask_utd.core.report import Report
from tests.helpers import SUPPORTED
from tests.helpers import Gunicorns
from tests.helpers import Servers
from tests.helpers import need_uwsgi
from tests.helpers import report_of
from tests.helpers import wait_for
from tests.lifecycle import layout

SIGNAL = faultdump.signal_for(5)
_ROUTER = re.compile(r"spawned uWSGI http 1 \(pid: (\d+)\)")

TEXT = """\
Thread 0x00007fbedf7fc6c0 (most recent call first):
  File "/lib/threading.py", line 320 in wait
  File "/lib/threading.py", line 1002 in _bootstrap

Current thread 0x00007fbee0440b80 (most recent call first):
  File "/app/views.py", line 12 in hold_the_gil
  File "/app/wsgi.py", line ??? in <module>
"""


def test_parse_faulthandler_text() -> None:
    threads = faultdump.parse(TEXT, agent_ident=0x7FBEDF7FC6C0)
    assert [t["ident"] for t in threads] == [0x7FBEE0440B80, 0x7FBEDF7FC6C0]
    current, agent = threads
    assert all(t["source"] == "faulthandler" for t in threads)
    assert agent["is_agent"] and not current["is_agent"]
    assert "took the signal" in current["name"]
    # Outermost first, as in every other report.
    assert [f["function"] for f in current["frames"]] == ["<module>", "hold_the_gil"]
    assert current["frames"][1]["line"] == 12 and current["frames"][0]["line"] == 0
    assert [f["function"] for f in agent["frames"]] == ["_bootstrap", "wait"]


def test_fallback_in_this_process(socket_dir: str) -> None:
    agent = start_agent(
        socket_dir, "77", role="process", worker_id=None, fault_signal=SIGNAL
    )
    try:
        directory = os.path.dirname(agent.path)
        assert os.path.exists(faultdump.fh_path(directory, os.getpid()))
        assert faultdump.catches(os.getpid(), SIGNAL)
        threads, note = faultdump.fallback_stacks(
            directory, os.getpid(), time.monotonic() + 5
        )
        assert threads is not None, note
        assert "faulthandler" in note
        mine = [t for t in threads if t["ident"] == threading.get_ident()]
        assert mine and mine[0]["frames"][-1]["function"] == "fallback_stacks"
        assert [t for t in threads if t["is_agent"]]
    finally:
        stop_agents()
    assert not faultdump.catches(os.getpid(), SIGNAL)
    assert not os.path.exists(faultdump.fh_path(directory, os.getpid()))


def _forged_note(directory: Path, pid: int) -> None:
    header = {
        "pid": pid,
        "signal": SIGNAL,
        "start_time": faultdump.start_time(pid),
        "agent_ident": None,
    }
    (directory / f"{pid}.fh").write_text(json.dumps(header) + "\n")


def test_a_process_without_a_handler_is_never_signalled(tmp_path: Path) -> None:
    # Like uWSGI's http router: the default action of a real-time signal kills.
    victim = subprocess.Popen(["sleep", "30"])
    try:
        _forged_note(tmp_path, victim.pid)
        threads, note = faultdump.fallback_stacks(
            str(tmp_path), victim.pid, time.monotonic() + 1
        )
        assert threads is None and "not signalled" in note
        assert victim.poll() is None
        # A note whose start time belongs to another process (a reused PID).
        header = json.loads((tmp_path / f"{victim.pid}.fh").read_text())
        header["start_time"] -= 1
        (tmp_path / f"{victim.pid}.fh").write_text(json.dumps(header) + "\n")
        threads, note = faultdump.fallback_stacks(
            str(tmp_path), victim.pid, time.monotonic() + 1
        )
        assert threads is None and victim.poll() is None
    finally:
        victim.kill()
        victim.wait(5)


def _get(url: str, timeout: float = 60) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


@pytest.mark.uwsgi
@pytest.mark.parametrize("version", SUPPORTED)
def test_uwsgi_worker_holding_the_gil(
    servers: Servers, socket_dir: str, version: str
) -> None:
    server = servers.start(
        need_uwsgi(version),
        [
            "--module",
            "tests.apps.plain:app",
            "--master",
            "--workers",
            "2",
            "--py-call-uwsgi-fork-hooks",
            "--die-on-term",
            # An http router too: a process the fallback must never signal.
            *("--http", "127.0.0.1:0"),
        ],
        env={"DEMO_GIL_SECONDS": "20"},
    )
    router = int(wait_for(lambda: _ROUTER.search(server.log()))[1])
    assert router in children(server.pid)
    wait_for(
        lambda: (
            len(report_of(server, socket_dir)["processes"]) == 3
            and all(
                p["status"] == "ok" for p in report_of(server, socket_dir)["processes"]
            )
        )
    )
    results: list[Any] = []
    caller = threading.Thread(
        target=lambda: results.append(_get(server.url("/gil"))), daemon=True
    )
    caller.start()
    timeout = 1.0

    def stuck_report() -> Report | None:
        started = time.monotonic()
        report = report_of(server, socket_dir, timeout=timeout)
        elapsed = time.monotonic() - started
        # The deadline holds, fallback included (generous slack for a busy box).
        assert elapsed < timeout + 1.5, elapsed
        stuck = [p for p in report["processes"] if p["status"] != "ok"]
        return report if stuck else None

    report = wait_for(stuck_report, timeout=20, interval=0.2)
    (stuck,) = [p for p in report["processes"] if p["status"] != "ok"]
    others = [p for p in report["processes"] if p["status"] == "ok"]
    assert {p["role"] for p in others} == {"master", "worker"}
    assert stuck["status"] == "timeout" and "GIL" in (stuck["error"] or "")
    assert stuck["role"] == "worker" and stuck["worker_id"] in (1, 2)
    assert stuck["stacks_source"] == "faulthandler", stuck["error"]
    assert all(t["source"] == "faulthandler" for t in stuck["threads"])
    in_view = [
        t
        for t in stuck["threads"]
        if t["frames"] and t["frames"][-1]["function"] == "hold_the_gil"
    ]
    assert in_view, stuck["threads"]
    assert "PyDLL" in (in_view[0]["frames"][-1]["code"] or "")
    # The signal interrupted libc's sleep, nothing worse: the worker answers.
    caller.join(30)
    assert results == ["slept holding the GIL\n"]
    wait_for(
        lambda: all(
            p["status"] == "ok" for p in report_of(server, socket_dir)["processes"]
        )
    )
    assert "signal 11" not in server.log() and "DAMN" not in server.log()
    # The router has no faulthandler file, was never signalled, and lives on.
    assert not os.path.exists(faultdump.fh_path(f"{socket_dir}/{server.pid}", router))
    assert router in children(server.pid)
    os.kill(server.pid, 0)
    assert signal.SIGRTMIN + 5 == SIGNAL


@pytest.mark.parametrize("value", ["5", True, -1, 10_000, 5.0])
def test_bad_signal_offset_fails_at_startup_naming_the_key(value: object) -> None:
    from flask import Flask

    from flask_utd import ConfigError
    from flask_utd import utd_bp

    app = Flask("x")
    app.config["UTD_FAULTHANDLER_SIGNAL_OFFSET"] = value
    with pytest.raises(ConfigError, match="UTD_FAULTHANDLER_SIGNAL_OFFSET"):
        app.register_blueprint(utd_bp)


@pytest.mark.parametrize(("value", "expected"), [(5, SIGNAL), (0, "min"), (None, None)])
def test_signal_offset(value: Any, expected: Any) -> None:
    from flask_utd.core.config import load_settings

    settings = load_settings(
        {"UTD_FAULTHANDLER_SIGNAL_OFFSET": value, "SECRET_KEY": "k"}
    )
    if expected == "min":
        expected = signal.SIGRTMIN
    assert settings.fault_signal == expected
    assert settings.fault_signal not in (signal.SIGUSR1, signal.SIGUSR2)


def test_socket_dir_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, socket_dir: str
) -> None:
    from flask_utd.core.config import default_socket_dirs
    from flask_utd.core.config import load_settings

    monkeypatch.setenv("UTD_SOCKET_DIR", socket_dir)
    assert default_socket_dirs()[0] == socket_dir
    assert load_settings({"SECRET_KEY": "k"}).socket_dir == socket_dir


def test_gunicorn_worker_holding_the_gil(gunicorns: Gunicorns, socket_dir: str) -> None:
    server = gunicorns.start(
        ["-w", "2", "tests.apps.plain:app"], env={"DEMO_GIL_SECONDS": "20"}
    )
    master = str(server.pid)
    wait_for(lambda: layout(socket_dir, server.pid, count=2))
    caller = threading.Thread(target=_get_quietly, args=(server.url("/gil"),))
    caller.daemon = True
    caller.start()

    def stuck() -> Process | None:
        report = collect(socket_dir, master, timeout=1.0)
        bad = [p for p in report["processes"] if p["status"] != "ok"]
        return bad[0] if bad else None

    process = wait_for(stuck, timeout=20, interval=0.2)
    assert process["status"] == "timeout" and "GIL" in process["error"]
    assert process["role"] == "worker" and process["worker_id"] in (1, 2)
    assert process["stacks_source"] == "faulthandler", process["error"]
    innermost = [t["frames"][-1]["function"] for t in process["threads"] if t["frames"]]
    assert "hold_the_gil" in innermost
    caller.join(30)
    wait_for(
        lambda: all(
            p["status"] == "ok" for p in collect(socket_dir, master)["processes"]
        )
    )


def _get_quietly(url: str) -> None:
    try:
        _get(url)
    except OSError:
        pass
