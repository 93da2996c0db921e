"""Samples: several stacks of the same thread, some time apart, and whether it
moved between them.

One dump cannot tell a thread that is stuck from one that is busy; two or more,
a second apart, can. The collector asks every agent N times and merges the
answers here (:func:`merge_samples`); the watchdog compares the stacks it saw of one
request at its checks (:func:`compare`). Both say the same two things of a
thread: ``moved`` (whether its stack changed) and ``same_line_s`` (for how long,
up to the last sample, it was on the same innermost line).

Done by the collector rather than by each agent: an agent that slept between
its own samples would answer nobody else meanwhile (it serves its clients from
one thread), and a collection already costs each agent one round trip, so N of
them cost N round trips and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .report import Frame
from .report import Report
from .report import Thread

#: Most samples ``--samples`` takes.
MAX_SAMPLES = 50
#: Longest ``--interval`` between samples, in seconds.
MAX_INTERVAL = 60.0
#: The interval when none is given, in seconds: what operators use by hand.
DEFAULT_INTERVAL = 1.0
#: Most samples ``GET /_utd/dump?samples=N`` takes, and its longest
#: ``interval``: a URL holds the worker that serves it for at most
#: (N - 1) x interval plus N collections.
URL_MAX_SAMPLES = 5
URL_MAX_INTERVAL = 2.0

#: What is compared of a stack: each frame's place, not its text or locals.
StackKey = tuple[tuple[Any, ...], ...]


def stack_key(frames: Sequence[Frame]) -> StackKey:
    """What two samples of a stack are compared by: (file, line, function) of
    every frame."""
    return tuple((f.get("file"), f.get("line"), f.get("function")) for f in frames)


def compare(
    samples: Sequence[tuple[float, StackKey]],
) -> tuple[bool | None, float | None]:
    """``(moved, same_line_s)`` of one thread from its samples, oldest first.

    :param samples: ``(time.monotonic(), stack_key(frames))`` of each sample of
        the thread (of one request: a thread that started another request in
        between was not the same thread for this purpose).
    :returns: ``(None, None)`` with fewer than two samples; else whether any
        sample's stack differs from the last one, and the time from the first
        sample of the trailing run on the last sample's innermost line to the
        last sample.
    """
    if len(samples) < 2:
        return None, None
    last_time, last = samples[-1]
    moved = any(key != last for _, key in samples[:-1])
    since = last_time
    innermost = last[-1] if last else None
    for when, key in reversed(samples):
        if (key[-1] if key else None) != innermost:
            break
        since = when
    return moved, round(last_time - since, 3)


def _identity(thread: Thread) -> tuple[Any, ...]:
    """What makes entries of two samples the same thread doing the same thing:
    its ident and native id, and the start of the request it serves."""
    request = thread.get("request")
    return (
        thread.get("ident"),
        thread.get("native_id"),
        request["started_at"] if request else None,
    )


def merge_samples(reports: Sequence[tuple[float, Report]], interval: float) -> Report:
    """One report from samples of the same instance, oldest first: the last
    one, with ``moved`` and ``same_line_s`` on every thread and ``samples`` on
    the report. A thread (of a process, serving the same request) found in
    fewer than two samples has both ``None``.

    :param reports: ``(time.monotonic() at the collection, its report)``.
    :param interval: the interval asked for, in seconds (for ``samples``).
    """
    if not reports:
        raise ValueError("no samples to merge")
    seen: dict[tuple[int, tuple[Any, ...]], list[tuple[float, StackKey]]] = {}
    for when, report in reports:
        for process in report["processes"]:
            for thread in process.get("threads") or ():
                key = (process["pid"], _identity(thread))
                seen.setdefault(key, []).append((when, stack_key(thread["frames"])))
    last = reports[-1][1]
    for process in last["processes"]:
        for thread in process.get("threads") or ():
            moved, same_line = compare(
                seen.get((process["pid"], _identity(thread)), [])
            )
            thread["moved"] = moved
            thread["same_line_s"] = same_line
    last["samples"] = {"count": len(reports), "interval_s": interval}
    return last
