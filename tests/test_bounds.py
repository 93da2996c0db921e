"""Bounds: a process with very many threads, or a very deep stack, gives a
bounded dump, taken quickly, that says what it left out."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_utd.agent import service as agent_module
from flask_utd.agent import snapshot
from flask_utd.agent import threads as thread_source
from flask_utd.agent.lifecycle import Agent
from flask_utd.agent.lifecycle import start_agent
from flask_utd.agent.lifecycle import stop_agents
from flask_utd.core.collector import collect
from flask_utd.core.report import Process
from tests.helpers import wait_for

INSTANCE = "4444"


@pytest.fixture
def agent(socket_dir: str) -> Iterator[Agent]:
    a = start_agent(socket_dir, INSTANCE, role="process", worker_id=None)
    yield a
    stop_agents()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def dump(socket_dir: str) -> tuple[Process, float]:
    started = time.perf_counter()
    report = collect(socket_dir, INSTANCE, timeout=10)
    elapsed = time.perf_counter() - started
    (process,) = report["processes"]
    assert process["status"] == "ok", process["error"]
    return process, elapsed


def test_two_thousand_threads(
    socket_dir: str, agent: Agent, release: threading.Event
) -> None:
    threads = [
        threading.Thread(target=release.wait, name=f"idle-{n}", daemon=True)
        for n in range(2000)
    ]
    for thread in threads:
        thread.start()
    total = len(thread_source.current_frames())
    assert total > thread_source.MAX_THREADS
    process, elapsed = dump(socket_dir)
    given = process["threads"]
    # And flask-utd's own, always: the agent, and this thread, collecting.
    assert len(given) == thread_source.MAX_THREADS + 2
    assert {t["own"] for t in given[-2:]} == {"agent", "collector"}
    assert total <= process["threads_truncated"] + len(given) <= total + 2
    # The main thread is among those given, and the oldest threads.
    idents = {t["ident"] for t in given}
    assert threading.main_thread().ident in idents
    assert threads[0].ident in idents and threads[-1].ident not in idents
    print(f"\n{total} threads: dump of {len(given)} in {elapsed * 1000:.0f} ms")
    release.set()
    for thread in threads:
        thread.join(10)
    process, _ = dump(socket_dir)
    assert "threads_truncated" not in process


def recurse(depth: int, event: threading.Event) -> None:
    if depth:
        recurse(depth - 1, event)
    else:
        event.wait()


def test_five_thousand_deep_recursion(
    socket_dir: str, agent: Agent, release: threading.Event
) -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        thread = threading.Thread(
            target=recurse, args=(5000, release), name="deep", daemon=True
        )
        thread.start()
        wait_for(lambda: depth_of(thread) > 5000, timeout=10)
        depth = depth_of(thread)
        process, elapsed = dump(socket_dir)
    finally:
        release.set()
        thread.join(10)
        sys.setrecursionlimit(limit)
    (deep,) = [t for t in process["threads"] if t["name"] == "deep"]
    assert len(deep["frames"]) == snapshot.MAX_FRAMES
    assert deep["frames_truncated"] == depth - snapshot.MAX_FRAMES
    # The innermost frames are the ones given: where the thread is now.
    assert deep["frames"][-1]["function"] == "wait"
    assert deep["frames"][0]["function"] == "recurse"
    others = [t for t in process["threads"] if t["name"] != "deep"]
    assert all("frames_truncated" not in t for t in others)
    print(f"\n{depth} frames deep: dump in {elapsed * 1000:.0f} ms")


def depth_of(thread: threading.Thread) -> int:
    assert thread.ident is not None
    frame = thread_source.current_frames().get(thread.ident)
    depth = 0
    while frame is not None:
        depth += 1
        frame = frame.f_back
    return depth


def test_report_size_cap(
    socket_dir: str,
    agent: Agent,
    release: threading.Event,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads = [
        threading.Thread(target=recurse, args=(30, release), daemon=True)
        for _ in range(100)
    ]
    for thread in threads:
        thread.start()
    monkeypatch.setattr(agent_module, "MAX_REPORT_BYTES", 50_000)
    total = len(thread_source.current_frames())
    process, _ = dump(socket_dir)
    assert len(json.dumps(process)) <= 50_000
    assert process["report_truncated"] is True
    omitted = process["threads_truncated"]
    assert total <= omitted + len(process["threads"]) <= total + 2
    assert omitted > 0
    assert process["threads"][-1]["is_agent"]


def test_long_source_lines_are_cut(tmp_path: Path, release: threading.Event) -> None:
    module = tmp_path / "longline.py"
    module.write_text(
        "def wait(event):\n    return event.wait()  # " + "x" * 5000 + "\n"
    )
    namespace: dict[str, Any] = {}
    exec(compile(module.read_text(), str(module), "exec"), namespace)
    thread = threading.Thread(target=namespace["wait"], args=(release,), daemon=True)
    thread.start()
    wait_for(lambda: depth_of(thread) > 0)
    reports, _locals = snapshot.thread_reports()
    (mine,) = [t for t in reports if t["ident"] == thread.ident]
    frame = next(f for f in mine["frames"] if f["file"] == str(module))
    code = frame["code"]
    assert code is not None and len(code) == snapshot.MAX_CODE_CHARS
    assert code.endswith("...")
    assert os.path.basename(frame["file"]) == "longline.py"
