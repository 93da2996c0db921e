"""The summary that opens a dump: stuck requests, then identical stacks.

Computed by the collector from the merged report, so that the text, the HTML
page and the JSON say the same. Imports neither Flask nor RPyC.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

from .nesting import running_greenlets
from .report import Frame
from .report import Process
from .report import Report

# Frames that are not the application's: Python's standard library, installed
# packages, and the frameworks a Flask app runs in (also when they are
# installed from a source tree).
_STDLIB = re.compile(r"/lib(64)?/python\d+(\.\d+)?t?/(?!(site|dist)-packages/)")
_INSTALLED = re.compile(r"/(site|dist)-packages/")
_FRAMEWORKS = re.compile(
    r"/(flask|werkzeug|flask_utd|rpyc|click|blinker|jinja2|itsdangerous|gunicorn"
    r"|gevent|eventlet)/|/uwsgidecorators\.py$"
)


def is_app_file(path: str, *, installed_ok: bool = False) -> bool:
    """Whether a frame's file belongs to the application.

    :param installed_ok: count files in ``site-packages`` as the app's (for an
        app that is itself installed as a package).
    """
    if not path or path.startswith("<"):
        return False
    if _STDLIB.search(path) or _FRAMEWORKS.search(path):
        return False
    return installed_ok or not _INSTALLED.search(path)


def app_frame(frames: Sequence[Frame]) -> dict[str, Any] | None:
    """The innermost frame that belongs to the application, or ``None``.

    Files outside ``site-packages`` come first; failing those, an installed
    package that is none of the frameworks.
    """
    for installed_ok in (False, True):
        for frame in reversed(frames):
            if is_app_file(frame.get("file") or "", installed_ok=installed_ok):
                return {k: frame.get(k) for k in ("file", "line", "function", "code")}
    return None


def _stack_key(frames: Sequence[Frame]) -> tuple[tuple[Any, ...], ...]:
    return tuple((f.get("file"), f.get("line"), f.get("function")) for f in frames)


def process_key(process: Mapping[str, Any]) -> tuple[Any, Any, int]:
    """What tells a process from every other in a report: its pid, and in a
    report merged from several hosts (:mod:`flask_utd.core.merge`) its host and
    server instance, since pids repeat across hosts (every container's first
    process is pid 1)."""
    return (process.get("host"), process.get("instance"), process["pid"])


def origin_of(process: Mapping[str, Any]) -> dict[str, Any]:
    """``host`` and ``instance`` of a process of a merged report, else nothing."""
    if "host" not in process:
        return {}
    return {"host": process["host"], "instance": process.get("instance")}


def summarize(report: Report, slow_after: float) -> dict[str, Any]:
    """The ``summary`` of a ``flask-utd/1`` report.

    flask-utd's own threads (``own``) are left out of the counts and the groups:
    they are the dump itself. In a merged report (processes labelled with ``host`` and
    ``instance``), each stuck request and each thread of a group says its host
    and instance, and each group counts its ``hosts``.

    :param report: the merged report (its ``processes``).
    :param slow_after: requests older than this many seconds are stuck
        (``UTD_SLOW_REQUEST``).
    Greenlets count as stacks of their own; an OS thread on which a greenlet
    runs at the moment of the dump is counted as that greenlet, once.

    :param report: the merged report (its ``processes``).
    :param slow_after: requests older than this many seconds are stuck
        (``UTD_SLOW_REQUEST``).
    :returns: ``processes``, ``answered``, ``blocked_hubs`` (longest first),
        ``threads_by_state``, ``stuck_requests`` (those that did not move across
        samples first, then the oldest) and ``stack_groups`` (largest first).
    """
    processes = report.get("processes") or []
    merged = any("host" in p for p in processes)
    by_state: Counter[str] = Counter()
    stuck: list[dict[str, Any]] = []
    blocked: list[dict[str, Any]] = []
    groups: dict[tuple[tuple[Any, ...], ...], dict[str, Any]] = {}
    for process in processes:
        origin = origin_of(process)
        entries = process.get("threads") or []
        hosted = running_greenlets(entries)
        blocked.extend(_blocked_hubs(process))
        for thread in entries:
            if thread.get("own") or thread.get("is_agent"):
                continue
            if thread.get("kind") != "greenlet" and thread["ident"] in hosted:
                continue  # its stack is the running greenlet's, counted there
            by_state[thread.get("wait") or "unknown"] += 1
            frames = thread.get("frames") or []
            request = thread.get("request")
            if request and (request.get("elapsed_s") or 0) >= slow_after:
                stuck.append(
                    {
                        **origin,
                        "pid": process["pid"],
                        "role": process.get("role"),
                        "worker_id": process.get("worker_id"),
                        "thread": thread.get("name"),
                        "ident": thread.get("ident"),
                        "kind": thread.get("kind", "thread"),
                        "method": request.get("method"),
                        "path": request.get("path"),
                        "endpoint": request.get("endpoint"),
                        "request_id": request.get("request_id"),
                        "started_at": request.get("started_at"),
                        "elapsed_s": request.get("elapsed_s"),
                        "wait": thread.get("wait"),
                        "call": thread.get("call"),
                        "moved": thread.get("moved"),
                        "same_line_s": thread.get("same_line_s"),
                        "app_frame": app_frame(frames),
                    }
                )
            key = _stack_key(frames)
            group = groups.get(key)
            if group is None:
                group = groups[key] = {
                    "count": 0,
                    "processes": 0,
                    "wait": thread.get("wait"),
                    "call": thread.get("call"),
                    "frames": frames,
                    "app_frame": app_frame(frames),
                    "threads": [],
                    "_pids": set(),
                }
            group["count"] += 1
            group["_pids"].add(process_key(process))
            group["threads"].append(
                {
                    **origin,
                    "pid": process["pid"],
                    "ident": thread.get("ident"),
                    "name": thread.get("name"),
                    "kind": thread.get("kind", "thread"),
                }
            )
    # A request whose thread did not move across samples is the likeliest stuck.
    stuck.sort(key=lambda s: (s["moved"] is not False, -(s["elapsed_s"] or 0)))
    blocked.sort(key=lambda b: -(b["for_s"] or 0))
    stack_groups = sorted(groups.values(), key=lambda g: -g["count"])
    for group in stack_groups:
        keys = group.pop("_pids")
        group["processes"] = len(keys)
        if merged:
            group["hosts"] = len({key[0] for key in keys})
    return {
        "processes": len(processes),
        "answered": sum(1 for p in processes if p.get("status") == "ok"),
        "slow_after": slow_after,
        "blocked_hubs": blocked,
        "threads_by_state": dict(by_state.most_common()),
        "stuck_requests": stuck,
        "stack_groups": stack_groups,
    }


def _blocked_hubs(process: Process) -> list[dict[str, Any]]:
    """The hubs of ``process`` that a greenlet keeps from running: which
    greenlet, for how long, and how many other greenlets wait on it."""
    entries = process.get("threads") or []
    found = []
    for hub in entries:
        culprit_ident = hub.get("blocked_by")
        if not hub.get("hub") or culprit_ident is None:
            continue
        culprit = next((e for e in entries if e["ident"] == culprit_ident), None)
        if culprit is None:
            continue
        thread_ident = hub.get("thread_ident")
        # Every greenlet of that thread, listed or counted, but the culprit.
        waiting = sum(
            1
            for e in entries
            if e.get("kind") == "greenlet"
            and e.get("thread_ident") == thread_ident
            and e is not culprit
        ) + (hub.get("idle_greenlets") or 0)
        blocking: dict[str, Any] = dict(culprit.get("blocking_hub") or {})
        frames = culprit.get("frames") or []
        found.append(
            {
                **origin_of(process),
                "pid": process["pid"],
                "role": process.get("role"),
                "worker_id": process.get("worker_id"),
                "thread_ident": thread_ident,
                "greenlet": culprit_ident,
                "name": culprit.get("name"),
                "for_s": hub.get("blocked_for_s"),
                "since": blocking.get("since"),
                "waiting": waiting,
                "wait": culprit.get("wait"),
                "request": culprit.get("request"),
                "app_frame": app_frame(frames),
            }
        )
    return found
