"""Greenlets under their OS thread: the order in which the renderings and the
summary read the entries of one process.

A process entry lists its OS threads (``"kind": "thread"``) and, under gevent,
greenlets (``"kind": "greenlet"``), each with the ``thread_ident`` of the thread
whose hub runs it. A reader wants each thread followed by its greenlets, the
stuck ones first; and a thread on which a greenlet runs at the moment of the
dump shows that greenlet's stack, so it is told once, not twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from .report import Thread


def is_greenlet(entry: Thread) -> bool:
    """Whether the entry is a greenlet's (older reports have no ``kind``)."""
    return entry.get("kind") == "greenlet"


def running_greenlets(entries: Sequence[Thread]) -> dict[int, Thread]:
    """``{thread ident: the greenlet running on it}``: those threads' own frames
    are that greenlet's."""
    found: dict[int, Thread] = {}
    for entry in entries:
        thread_ident = entry.get("thread_ident")
        if is_greenlet(entry) and entry.get("running") and thread_ident is not None:
            found[thread_ident] = entry
    return found


def _greenlet_key(entry: Thread, slow_after: float) -> tuple[int, float]:
    request = entry.get("request")
    elapsed = (request["elapsed_s"] if request else None) or 0.0
    if entry.get("blocking_hub"):
        rank = 0
    elif request and elapsed >= slow_after:
        rank = 1
    elif entry.get("running"):
        rank = 2
    elif entry.get("hub"):
        rank = 3
    elif request:
        rank = 4
    else:
        rank = 5
    return rank, -elapsed


def nested(entries: Sequence[Thread], slow_after: float) -> list[tuple[Thread, int]]:
    """The entries in reading order, each with its depth: every thread as
    listed, followed (depth 1) by the greenlets its hub runs, the one blocking
    the hub first, then stuck requests (oldest first), the running one, the hub,
    other requests, the rest. Greenlets of a thread that is not listed come
    last, at depth 0.

    :param slow_after: requests older than this many seconds are stuck.
    """
    greenlets: dict[int | None, list[Thread]] = {}
    for entry in entries:
        if is_greenlet(entry):
            greenlets.setdefault(entry.get("thread_ident"), []).append(entry)
    for group in greenlets.values():
        group.sort(key=lambda e: _greenlet_key(e, slow_after))
    ordered: list[tuple[Thread, int]] = []
    for entry in entries:
        if is_greenlet(entry):
            continue
        ordered.append((entry, 0))
        ordered.extend((g, 1) for g in greenlets.pop(entry["ident"], ()))
    for group in greenlets.values():
        ordered.extend((g, 0) for g in group)
    return ordered
