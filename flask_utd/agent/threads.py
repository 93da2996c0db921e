"""The first stack source: every OS thread that ``sys._current_frames()`` knows,
uWSGI's core threads (dummy threads to :mod:`threading`) included."""

from __future__ import annotations

import gc
import os
import sys
import threading
from types import FrameType

from ..core import marks
from . import native
from . import sources
from . import tracking
from .sources import Found
from .sources import SnapshotContext
from .sources import Stack

#: Most threads given for one process; flask-utd's own are always given. A
#: process with more has ``"threads_truncated"``: how many were left out.
MAX_THREADS = 500


def current_frames() -> dict[int, FrameType]:
    """``sys._current_frames()``, with the garbage collector held off on Python
    3.11: there it builds its dict while holding the lock on the thread list, and
    a collection triggered by that allocation which frees a ``threading.local``
    takes the same lock, and the whole process hangs (docs/uwsgi.rst, "Found the
    hard way"; tests/test_snapshot.py reproduces it)."""
    if sys.version_info[:2] != (3, 11) or not gc.isenabled():
        return sys._current_frames()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        gc.enable()


def main_native_id() -> int | None:
    """The native id of the main thread. After a fork the main thread keeps the
    parent's native id in ``threading``; in the child it is the thread whose id is
    the pid."""
    native = threading.main_thread().native_id
    if native is None or native == os.getpid():
        return native
    if os.path.exists(f"/proc/self/task/{native}"):
        return native
    return os.getpid()


def _kept(current: dict[int, FrameType], own: set[int]) -> set[int] | None:
    """Which threads to give when there are more than :data:`MAX_THREADS`: the
    main thread, then the oldest (Python lists the newest first), and always
    flask-utd's own; ``None`` when all are given."""
    if len(current) <= MAX_THREADS:
        return None
    main = native.main_thread_ident() or threading.main_thread().ident
    others = [i for i in reversed(current) if i not in own and i != main]
    if main in current and main not in own:
        others.insert(0, main)
    return set(others[:MAX_THREADS]) | (current.keys() & own)


@sources.register
def thread_stacks(context: SnapshotContext) -> Found:
    """The stack source of OS threads."""
    by_ident: dict[int | None, threading.Thread] = {
        t.ident: t for t in threading.enumerate()
    }
    main_thread = threading.main_thread()
    # Under gevent, threading knows the main thread by its main greenlet's id,
    # and the agent's own threads not at all (.native).
    main_ident = native.main_thread_ident()
    if main_ident is not None:
        by_ident[main_ident] = main_thread
    main_native = main_native_id()
    own = marks.marked()
    current = context.thread_frames
    if context.only is not None:
        current = {i: f for i, f in current.items() if i in context.only}
    kept = _kept(current, set(own))
    found = Found([], 0 if kept is None else len(current) - len(kept))
    for ident, frame in current.items():
        if kept is not None and ident not in kept:
            continue
        thread = by_ident.get(ident)
        bare = native.bare_thread(ident) if thread is None else None
        if thread is None:
            native_id = None if bare is None else bare.native_id
        elif thread is main_thread:
            native_id = main_native
        else:
            native_id = thread.native_id
        if thread is not None:
            name, daemon = thread.name, thread.daemon
        elif bare is not None:
            name, daemon = bare.name, True
        else:
            name, daemon = f"<thread {ident}>", None
        found.stacks.append(
            Stack(
                kind="thread",
                ident=ident,
                name=name,
                frame=frame,
                native_id=native_id,
                daemon=daemon,
                request=tracking.request_of(ident, context.now),
                own=own.get(ident),
                taking_snapshot=ident == context.me,
            )
        )
    return found
