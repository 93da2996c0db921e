"""Churn: steady load, workers respawning (low max-requests, a SIGKILL every few
seconds) and dumps in a loop. No worker crashes or deadlocks, no user request
fails because of dumping, every report is complete or explicitly partial.

``UTD_CHURN_SECONDS`` (default 30) sets the uWSGI run, ``UTD_CHURN_GUNICORN_SECONDS``
(default 10) the gunicorn one. The counts are printed (``pytest -s``).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import pytest

from demo_app.server import UwsgiServer
from demo_app.server import children
from flask_utd.core import sockets
from flask_utd.core.collector import collect
from tests.helpers import Gunicorns
from tests.helpers import Servers
from tests.helpers import need_uwsgi
from tests.helpers import wait_for
from tests.lifecycle import files_by_kind
from tests.lifecycle import get
from tests.lifecycle import layout
from tests.lifecycle import no_crash

KILL_EVERY = 3.0
TIMEOUT = 2.0
STATUSES = {"ok", "timeout", "refused", "stale", "unsafe", "error"}


@dataclass
class Churn:
    """What happened during one churn run."""

    requests: int = 0
    failed: list[tuple[float, float, str]] = field(default_factory=list)
    kills: list[float] = field(default_factory=list)
    dumps: int = 0
    complete: int = 0
    partial: Counter[str] = field(default_factory=Counter)
    slowest_dump: float = 0.0
    messages: Counter[str] = field(default_factory=Counter)

    def failed_by_dumping(self) -> list[tuple[float, float, str]]:
        """Failed requests that no SIGKILL explains: a killed worker drops the
        request it was serving, nothing else may fail."""
        return [
            (start, end, error)
            for start, end, error in self.failed
            if not any(start - 0.2 <= kill <= end + 0.2 for kill in self.kills)
        ]

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failed": len(self.failed),
            "failed_by_dumping": len(self.failed_by_dumping()),
            "kills": len(self.kills),
            "dumps": self.dumps,
            "complete": self.complete,
            "partial": dict(self.partial),
            "slowest_dump_s": round(self.slowest_dump, 3),
            "messages": dict(self.messages),
        }


def churn(
    url: Callable[[str], str],
    master: int,
    socket_dir: str,
    seconds: float,
    *,
    workers: int,
) -> Churn:
    """Load, kill and dump for ``seconds``; every loop is bounded by the end."""
    result = Churn()
    end = time.monotonic() + seconds
    lock = threading.Lock()

    def load() -> None:
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                get(url("/pid"), timeout=10)
            except (OSError, http.client.HTTPException) as err:
                with lock:
                    result.failed.append((started, time.monotonic(), repr(err)))
            with lock:
                result.requests += 1

    def kill() -> None:
        rng = random.Random(5)
        next_kill = time.monotonic() + KILL_EVERY
        while time.monotonic() < end - 1:
            time.sleep(0.05)
            if time.monotonic() < next_kill:
                continue
            alive = sorted(children(master))
            # Both workers may be between max-requests and their respawn.
            if alive:
                next_kill += KILL_EVERY
                with lock:
                    result.kills.append(time.monotonic())
                try:
                    os.kill(rng.choice(alive), signal.SIGKILL)
                except ProcessLookupError:
                    pass  # it had just exited (max-requests)

    def dump() -> None:
        directory = sockets.instance_dir(socket_dir, str(master))
        while time.monotonic() < end:
            before = children(master) | {master}
            listed = {e.pid for e in sockets.list_entries(directory)}
            started = time.monotonic()
            report = collect(socket_dir, str(master), timeout=TIMEOUT)
            took = time.monotonic() - started
            after = children(master) | {master}
            listed &= {e.pid for e in sockets.list_entries(directory)}
            result.slowest_dump = max(result.slowest_dump, took)
            result.dumps += 1
            processes = report["processes"]
            for p in processes:
                assert p["status"] in STATUSES, p
                # Explicitly partial: a process that did not answer says why.
                assert p["status"] == "ok" or p["error"], p
                assert p["status"] != "ok" or p["threads"], p
            reported = {p["pid"] for p in processes}
            # Never left out silently: a process that had its socket before and
            # after the dump and still lives is in the report, answered or not
            # (one that removed its socket as it exits may be left out).
            assert (listed & after) <= reported, (listed, after, processes)
            ok = {p["pid"] for p in processes if p["status"] == "ok"}
            if before == after == ok:
                result.complete += 1
            elif reported != ok:
                for p in processes:
                    if p["pid"] not in ok:
                        result.partial[p["status"]] += 1
                        message = str(p["error"]).replace(str(p["pid"]), "N")
                        result.messages[message[:90]] += 1
            elif (before & after) <= reported | {u["pid"] for u in report["unlisted"]}:
                # All that answered were ok, and a process born or dying during
                # the dump (a respawn), with no socket yet or no more, is listed
                # in "unlisted": explicitly partial.
                result.partial["unlisted"] += 1
            else:
                # Left out without a word: what the issue forbids.
                result.partial["silent"] += 1
            assert len(processes) <= workers + 3, processes

    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(f) for f in (load, load, kill, dump)]
        for future in futures:
            future.result(timeout=seconds + 30)
    # The dump's deadline held under churn (generous slack for a busy box).
    assert result.slowest_dump < TIMEOUT + 1.5, result.summary()
    return result


def every_worker_serves(url: Callable[[str], str], master: int, workers: int) -> bool:
    """``workers`` requests at once, each taking a while: each worker serves one."""
    before = children(master)
    try:
        with ThreadPoolExecutor(workers) as pool:
            pids = set(
                pool.map(lambda _: int(get(url("/pid?sleep=0.5"))), range(workers))
            )
    except (OSError, http.client.HTTPException):
        return False
    # A worker may retire (max-requests) right after it served.
    return len(pids) == workers and pids <= before | children(master)


def check_after(
    result: Churn, url: Callable[[str], str], master: int, socket_dir: str
) -> None:
    print("\nchurn:", json.dumps(result.summary()))
    assert result.requests > 0 and result.dumps > 0 and result.kills
    assert result.complete > 0, result.summary()
    # Every report complete or explicitly partial: none left a process out silently.
    assert result.partial["silent"] == 0, result.summary()
    assert not result.failed_by_dumping(), result.summary()
    # Nobody is deadlocked: every process answers its dump and every worker serves.
    try:
        wait_for(lambda: layout(socket_dir, master, count=2))
    except AssertionError as err:
        files = files_by_kind(socket_dir, master)
        raise AssertionError(f"{err}: {files} for {children(master)}") from None
    report = collect(socket_dir, str(master), timeout=5)
    assert [p["status"] for p in report["processes"]] == ["ok"] * 3, report
    wait_for(lambda: every_worker_serves(url, master, 2), timeout=20, interval=0.2)


@pytest.mark.uwsgi
def test_uwsgi_churn(servers: Servers, socket_dir: str) -> None:
    seconds = float(os.environ.get("UTD_CHURN_SECONDS", "30"))
    server: UwsgiServer = servers.start(
        need_uwsgi(),
        [
            *("--module", "tests.apps.plain:app", "--master", "--workers", "2"),
            *("--py-call-uwsgi-fork-hooks", "--die-on-term"),
            *("--max-requests", "20", "--min-worker-lifetime", "1"),
        ],
    )
    wait_for(lambda: layout(socket_dir, server.pid, count=2))
    result = churn(server.url, server.pid, socket_dir, seconds, workers=2)
    check_after(result, server.url, server.pid, socket_dir)
    no_crash(server.log(), killed=len(result.kills))
    assert server.log().count("is done. Seeya!") > 0  # max-requests respawns


def test_gunicorn_churn(gunicorns: Gunicorns, socket_dir: str) -> None:
    seconds = float(os.environ.get("UTD_CHURN_GUNICORN_SECONDS", "10"))
    server = gunicorns.start(
        ["-w", "2", "--max-requests", "20", "tests.apps.plain:app"]
    )
    wait_for(lambda: layout(socket_dir, server.pid, count=2))
    result = churn(server.url, server.pid, socket_dir, seconds, workers=2)
    check_after(result, server.url, server.pid, socket_dir)
    log = server.log()
    assert log.count("was sent SIGKILL") == len(result.kills), log[-3000:]
    assert "SIGSEGV" not in log and "WORKER TIMEOUT" not in log
    assert "Autorestarting worker" in log  # max-requests respawns
