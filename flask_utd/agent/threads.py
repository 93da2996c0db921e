"""The first stack source: every OS thread that ``sys._current_frames()`` knows,
uWSGI's core threads (dummy threads to :mod:`threading`) included."""

from __future__ import annotations

import gc
import os
import sys
import threading
from types import FrameType

from ..core import marks
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


def _main_native_id() -> int | None:
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
    main = threading.main_thread().ident
    others = [i for i in reversed(current) if i not in own and i != main]
    if main in current and main not in own:
        others.insert(0, main)
    return set(others[:MAX_THREADS]) | (current.keys() & own)


@sources.register
def thread_stacks(context: SnapshotContext) -> Found:
    """The stack source of OS threads."""
    by_ident = {t.ident: t for t in threading.enumerate()}
    main_thread = threading.main_thread()
    main_native = _main_native_id()
    own = marks.marked()
    current = context.thread_frames
    if context.only is not None:
        frame = current.get(context.only)
        current = {} if frame is None else {context.only: frame}
    kept = _kept(current, set(own))
    found = Found([], 0 if kept is None else len(current) - len(kept))
    for ident, frame in current.items():
        if kept is not None and ident not in kept:
            continue
        thread = by_ident.get(ident)
        if thread is None:
            native_id = None
        elif thread is main_thread:
            native_id = main_native
        else:
            native_id = thread.native_id
        found.stacks.append(
            Stack(
                kind="thread",
                ident=ident,
                name=f"<thread {ident}>" if thread is None else thread.name,
                frame=frame,
                native_id=native_id,
                daemon=None if thread is None else thread.daemon,
                request=tracking.request_of(ident, context.now),
                own=own.get(ident),
                taking_snapshot=ident == context.me,
            )
        )
    return found
