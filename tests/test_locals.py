"""Locals, opt-in: redacted, cut short, and never able to break or delay a dump."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from flask_utd import ConfigError
from flask_utd import utd_bp
from flask_utd.agent.frame_locals import LocalsRequest
from flask_utd.agent.frame_locals import safe_repr
from flask_utd.agent.lifecycle import start_agent
from flask_utd.agent.lifecycle import stop_agents
from flask_utd.agent.snapshot import process_report
from flask_utd.core.collector import collect
from flask_utd.core.render import render_text
from flask_utd.core.report import Process
from tests.helpers import wait_for

INSTANCE = "4343"


class Raises:
    def __repr__(self) -> str:
        raise ValueError("no repr for you")


class Slow:
    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def __repr__(self) -> str:
        self.release.wait(30)  # "blocks" until the test lets it go
        return "<Slow finally>"


class Nice:
    def __repr__(self) -> str:
        return "<Nice id=5>"


@pytest.fixture
def stuck_view() -> Iterator[dict[str, Any]]:
    """A thread parked in a function whose locals hold every kind of value."""
    ready = threading.Event()
    done = threading.Event()
    unblock_repr = threading.Event()
    objects: dict[str, Any] = {}

    def checkout(user_id: int, cart: list[Any]) -> None:
        password = "hunter2"
        api_token = "tok-123"
        headers = {"Authorization": "Bearer abc", "Accept": "text/html"}
        db_url = "postgresql://shop:s3cret@db/shop"
        note = "x" * 5000
        nice = Nice()
        raises = Raises()
        slow = Slow(unblock_repr)
        objects.update(nice=nice, raises=raises, slow=slow)
        ready.set()
        done.wait(30)
        del password, api_token, headers, db_url, note, nice, raises, slow

    t = threading.Thread(target=checkout, args=(7, [1, "a", None]), name="view")
    t.start()
    assert ready.wait(10)
    yield {"thread": t, "unblock_repr": unblock_repr}
    unblock_repr.set()
    done.set()
    t.join(10)


def _view_locals(report: Process) -> dict[str, str]:
    views = [t for t in report["threads"] if t["name"] == "view"]
    assert views, {
        key: report.get(key) for key in ("status", "error", "threads_truncated")
    } | {"threads": sorted(t["name"] for t in report["threads"])}
    view = views[0]
    frame = next(f for f in view["frames"] if f["function"] == "checkout")
    shown: dict[str, str] = frame["locals"]
    return shown


def test_builtin_values_shown_secrets_redacted_no_repr_called(
    stuck_view: dict[str, Any],
) -> None:
    ask = LocalsRequest(frames=3, reprs="builtin", budget=0.5)
    started = time.monotonic()
    report = process_report(role="process", worker_id=None, locals_request=ask)
    elapsed = time.monotonic() - started
    shown = _view_locals(report)
    assert shown["user_id"] == "7" and shown["cart"] == "[1, 'a', None]"
    assert shown["password"] == "<redacted>" and shown["api_token"] == "<redacted>"
    assert shown["headers"] == "{'Authorization': <redacted>, 'Accept': 'text/html'}"
    assert shown["db_url"] == "'postgresql://shop:<redacted>@db/shop'"
    assert "hunter2" not in str(report) and "s3cret" not in str(report)
    assert shown["note"].endswith("... (5000 long)") and len(shown["note"]) < 250
    # No object's own __repr__ runs: neither the raising nor the blocking one.
    assert shown["nice"].startswith("<tests.test_locals.Nice object at 0x")
    assert shown["raises"].startswith("<tests.test_locals.Raises object at 0x")
    assert shown["slow"].startswith("<tests.test_locals.Slow object at 0x")
    assert report["locals"] == {
        "frames": 3,
        "reprs": "builtin",
        "complete": True,
        "notes": [],
    }
    # Only the innermost 3 frames of a thread carry locals.
    view = next(t for t in report["threads"] if t["name"] == "view")
    with_locals = [i for i, f in enumerate(view["frames"]) if "locals" in f]
    assert with_locals and min(with_locals) >= len(view["frames"]) - 3
    assert elapsed < 10  # a bound for correctness, not a speed claim


def test_own_reprs_raise_or_block_within_the_budget(stuck_view: dict[str, Any]) -> None:
    ask = LocalsRequest(frames=3, reprs="all", budget=0.3)
    started = time.monotonic()
    report = process_report(role="process", worker_id=None, locals_request=ask)
    elapsed = time.monotonic() - started
    shown = _view_locals(report)
    assert shown["nice"] == "<Nice id=5>"
    assert shown["raises"] == "<repr raised ValueError>"
    assert shown["slow"].endswith("(repr not finished)")
    assert shown["password"] == "<redacted>"
    assert report["locals"]["complete"] is False
    assert "UTD_LOCALS_BUDGET" in report["locals"]["notes"][0]
    # The dump did not wait for the blocked repr (30 s): the budget, plus slack.
    assert elapsed < 5
    # While that repr is still blocked, later dumps call no __repr__ at all.
    again = process_report(role="process", worker_id=None, locals_request=ask)
    assert _view_locals(again)["nice"].startswith("<tests.test_locals.Nice object")
    assert "still blocked" in again["locals"]["notes"][0]
    helper = next(t for t in again["threads"] if t["name"] == "utd-repr")
    assert any(f["function"] == "__repr__" for f in helper["frames"])
    stuck_view["unblock_repr"].set()
    wait_for(lambda: not any(t.name == "utd-repr" for t in threading.enumerate()))


def test_safe_repr_writes_builtins_only() -> None:
    assert safe_repr(None) == "None" and safe_repr(1.5) == "1.5"
    assert safe_repr((1,)) == "(1,)" and safe_repr(set()) == "set()"
    assert safe_repr([[[[1]]]]) == "[[<list of 1>]]"
    long = safe_repr(list(range(50)))
    assert long is not None and long.endswith("... (50 items)]")
    assert safe_repr(10**1000) == "<int of 3322 bits>"
    assert safe_repr(Nice()) is None

    class MyStr(str):
        def __repr__(self) -> str:
            raise AssertionError("a subclass's repr is never called")

    assert safe_repr(MyStr("x")) is None


def test_agent_refuses_locals_unless_the_app_allows_them(socket_dir: str) -> None:
    start_agent(socket_dir, INSTANCE, role="process", worker_id=None)
    try:
        report = collect(socket_dir, INSTANCE, options={"locals": True})
    finally:
        stop_agents()
    (process,) = report["processes"]
    assert (
        process["status"] == "ok" and "UTD_LOCALS = True" in process["locals"]["error"]
    )
    assert not any("locals" in f for t in process["threads"] for f in t["frames"])
    assert "Locals refused: locals are off" in render_text(report)


def test_cli_locals_through_the_agent(
    socket_dir: str, stuck_view: dict[str, Any]
) -> None:
    app = Flask("withlocals")
    app.config.update(
        TESTING=True,
        SECRET_KEY="test-secret",
        UTD_SOCKET_DIR=socket_dir,
        UTD_LOCALS=True,
        UTD_LOCALS_FRAMES=3,
    )
    app.register_blueprint(utd_bp)
    try:
        app.test_client().get("/")  # the first request starts the agent
        result = app.test_cli_runner().invoke(args=["utd", "dump", "--locals"])
        plain = app.test_cli_runner().invoke(args=["utd", "dump"])
    finally:
        stop_agents()
    assert result.exit_code == 0, result.output
    view = result.output.split('Thread "view"')[1].split("\nThread ")[0]
    assert "      user_id = 7" in view and "      password = <redacted>" in view
    assert "hunter2" not in result.output
    assert "user_id = 7" not in plain.output  # locals only when asked
    assert "\nNo request in progress.\n" in plain.output


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("UTD_LOCALS", "yes"),
        ("UTD_LOCALS_FRAMES", 0),
        ("UTD_LOCALS_REPR", "some"),
        ("UTD_LOCALS_BUDGET", 5.0),  # not below UTD_TIMEOUT
        ("UTD_CAPTURE_QUERY", 1),
        ("UTD_SLOW_REQUEST", -1),
    ],
)
def test_bad_values_name_the_key(key: str, value: object) -> None:
    app = Flask("x")
    app.config["SECRET_KEY"] = "s"
    app.config[key] = value
    with pytest.raises(ConfigError, match=key):
        app.register_blueprint(utd_bp)


def test_defaults() -> None:
    app = Flask("x")
    app.config["SECRET_KEY"] = "s"
    app.register_blueprint(utd_bp)
    assert app.config["UTD_LOCALS"] is False
    assert app.config["UTD_CAPTURE_QUERY"] is False
    assert app.config["UTD_SLOW_REQUEST"] == 5.0
    assert os.fspath(app.extensions["utd"].settings.socket_dir)
