"""The dump of one process: every thread Python knows, with its stack.

Runs in the agent thread of the process being dumped, never in a request thread.
"""

from __future__ import annotations

import gc
import linecache
import os
import sys
import threading
import time
from collections.abc import Collection
from types import CodeType
from types import FrameType
from typing import Any

from . import tracking
from . import waits
from .frame_locals import LocalsRequest
from .frame_locals import collect_locals
from .ghosts import ghost_message
from .ghosts import ghost_threads

#: Name given to the agent thread of every process.
AGENT_THREAD_NAME = "utd-agent"

#: Most frames given for one thread: the innermost ones (where the thread is
#: now). A thread with more has ``"frames_truncated"``: how many outer frames
#: were left out.
MAX_FRAMES = 200
#: Most threads given for one process; the agent's threads are always given.
#: A process with more has ``"threads_truncated"``: how many were left out.
MAX_THREADS = 500
#: Longest source line given as a frame's ``"code"``; a longer one is cut and
#: ends with "...".
MAX_CODE_CHARS = 200


class ThreadReports(list[dict[str, Any]]):
    """The thread entries of a process, and how many threads were left out."""

    omitted: int = 0


def _frame_entry(code: CodeType, lineno: int | None) -> dict[str, Any]:
    line = lineno or code.co_firstlineno
    text = linecache.getline(code.co_filename, line).strip()
    if len(text) > MAX_CODE_CHARS:
        text = text[: MAX_CODE_CHARS - 3] + "..."
    return {
        "file": code.co_filename,
        "line": line,
        "function": code.co_name,
        "code": text or None,
    }


_NO_FRAMES: list[FrameType] = []  # never written to: the frame objects, unasked


def _frame_stack(
    frame: FrameType | None,
    memo: dict[int, dict[int, dict[str, Any]]],
    *,
    shared: bool = True,
) -> tuple[list[dict[str, Any]], list[FrameType], int]:
    """The innermost :data:`MAX_FRAMES` frames, outermost first, their frame
    objects (only without ``shared``: they are for the locals), and how many
    outer frames were left out (counted, not read).

    ``memo`` maps ``id(code)``, then the instruction, to the frame's entry, for one
    snapshot: the threads of a server run the same code, so most frames are
    looked up rather than built (and their source line read) again. With
    ``shared``, the same entry then appears in several stacks: treat them as
    read-only. Without it (when locals are added to the entries), each stack gets
    its own copies. The ids are stable because the frames keep their code objects
    alive for the snapshot. (Keyed by id, not by the code object: hashing a code
    object hashes its contents.)
    """
    frames: list[dict[str, Any]] = []
    append = frames.append
    # Most of the snapshot's time is this loop, and its target is 1.5x a bare
    # walk (docs/performance.md). Keyed by the instruction, not the line: a
    # frame's ``f_lineno`` decodes the code's line table, most of what a bare
    # walk costs, and a looked-up frame needs no line. Subscripts, not ``.get()``
    # calls.
    innermost = frame
    for _ in range(MAX_FRAMES):
        if frame is None:
            break
        code = frame.f_code
        try:
            entry = memo[id(code)][frame.f_lasti]
        except KeyError:
            entry = _frame_entry(code, frame.f_lineno)
            memo.setdefault(id(code), {})[frame.f_lasti] = entry
        append(entry)
        frame = frame.f_back
    omitted = 0
    while frame is not None:
        omitted += 1
        frame = frame.f_back
    objects = _NO_FRAMES
    if not shared:
        objects = []  # copies of the entries, and the frame objects, for the locals
        frames = [dict(entry) for entry in frames]
        frame = innermost
        while frame is not None and len(objects) < len(frames):
            objects.append(frame)
            frame = frame.f_back
    frames.reverse()
    if not shared:
        objects.reverse()
    return frames, objects, omitted


def _infer_from_end(
    frames: list[dict[str, Any]], calling: bool | None
) -> tuple[str, int | None, bool | None]:
    """:func:`waits.infer`, with the frame it was read from counted from the
    innermost (0), so that threads with other outer frames can share it, and
    ``calling``."""
    wait, index = waits.infer(frames, calling=calling)
    return wait, None if index is None else len(frames) - 1 - index, calling


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


def thread_reports(
    agent_idents: Collection[int], locals_request: LocalsRequest | None = None
) -> tuple[ThreadReports, dict[str, Any] | None]:
    """One entry per thread that ``sys._current_frames()`` knows, and the report's
    ``locals`` entry when locals were asked for.

    Only call this when :func:`ghost_threads` is empty: with ghost thread states,
    ``sys._current_frames()`` can crash the process (Python 3.11) or answer with a
    stack that belongs to the parent (3.10).

    :param agent_idents: idents of the agent's own threads, marked ``is_agent``.
    :param locals_request: show the locals of the innermost frames (never of the
        agent's threads).
    """
    by_ident = {t.ident: t for t in threading.enumerate()}
    main_thread = threading.main_thread()
    main_native = _main_native_id()
    me = threading.get_ident()
    now = time.monotonic()
    current = current_frames()
    with_locals: list[tuple[list[dict[str, Any]], list[FrameType]]] = []
    threads = ThreadReports()
    agents: list[dict[str, Any]] = []
    memo: dict[int, dict[int, dict[str, Any]]] = {}
    ends: dict[tuple[int, ...], tuple[str, int | None, bool | None]] = {}
    shared = locals_request is None
    try:
        kept: set[int] | None = None
        if len(current) > MAX_THREADS:
            # The main thread, then the oldest (Python lists the newest first),
            # and always the agent's own.
            main = main_thread.ident
            others = [
                i for i in reversed(current) if i not in agent_idents and i != main
            ]
            if main in current and main not in agent_idents:
                others.insert(0, main)
            kept = set(others[:MAX_THREADS]) | (current.keys() & set(agent_idents))
            threads.omitted = len(current) - len(kept)
        for ident, frame in current.items():
            if kept is not None and ident not in kept:
                continue
            thread = by_ident.get(ident)
            frames, objects, omitted = _frame_stack(frame, memo, shared=shared)
            request = tracking.request_of(ident, now)
            # Threads that end in the same frames (the same instructions, so the
            # same entries) wait on the same thing: the state is inferred once
            # per distinct end of stack.
            end = tuple(map(id, frames[-waits.INNERMOST :]))
            inferred = ends.get(end)
            if inferred is None:
                inferred = ends[end] = _infer_from_end(frames, waits.in_call(frame))
            wait, from_end, calling = inferred
            wait_frame = None if from_end is None else len(frames) - 1 - from_end
            if thread is None:
                native_id = None
            elif thread is main_thread:
                native_id = main_native
            else:
                native_id = thread.native_id
            # The OS state only where it tells more than the frames: reading it
            # costs more than walking a 20-frame stack (docs/diagnosis.rst).
            os_state = wchan = None
            if ident == me:
                os_state = "R"  # this thread, taking the snapshot
            elif request is not None or wait in waits.OPEN_STATES:
                os_state, wchan = waits.os_state(native_id)
                if wait == "unknown":
                    wait, wait_frame = waits.infer(
                        frames, calling=calling, os_state=os_state
                    )
            owner = None
            if wait == "waiting-lock" and frames:
                owner = waits.lock_owner(frame, frames[-1]["code"], ident)
            is_agent = ident in agent_idents
            entry: dict[str, Any] = {
                "ident": ident,
                "native_id": native_id,
                "name": f"<thread {ident}>" if thread is None else thread.name,
                "daemon": None if thread is None else thread.daemon,
                "is_agent": is_agent,
                "request": request,
                "wait": wait,
                "wait_frame": wait_frame,
                "os_state": os_state,
                "wchan": wchan,
                "lock_owner": owner,
                "frames": frames,
            }
            if omitted:
                entry["frames_truncated"] = omitted
            if is_agent:
                agents.append(entry)
                continue
            threads.append(entry)
            if not shared:
                with_locals.append((frames, objects))
        locals_entry = None
        if locals_request is not None:
            locals_entry = collect_locals(with_locals, locals_request)
    finally:
        del current, with_locals, memo
    # The agent's own threads last: they are never the interesting ones.
    threads.extend(agents)
    return threads, locals_entry


def process_report(
    *,
    role: str,
    worker_id: int | None,
    agent_idents: Collection[int],
    unsafe: str | None = None,
    locals_request: LocalsRequest | None = None,
    locals_error: str | None = None,
) -> dict[str, Any]:
    """The ``flask-utd/1`` entry of this process.

    :param role: ``"master"``, ``"worker"`` or ``"process"``.
    :param worker_id: the server's number for this worker, or ``None``.
    :param agent_idents: idents of the agent's threads.
    :param unsafe: why stacks cannot be read safely here; the report then has
        status ``"unsafe"`` and no threads.
    :param locals_request: show the locals of each thread's innermost frames.
    :param locals_error: locals were asked for and refused: why.
    """
    report: dict[str, Any] = {
        "pid": os.getpid(),
        "role": role,
        "worker_id": worker_id,
        "status": "ok",
        "error": None,
        "threads": [],
    }
    if unsafe is None:
        ghosts = ghost_threads()
        if ghosts:
            unsafe = ghost_message(ghosts)
    if unsafe is not None:
        report["status"] = "unsafe"
        report["error"] = unsafe
        return report
    threads, locals_entry = thread_reports(agent_idents, locals_request)
    report["threads"] = threads
    if threads.omitted:
        report["threads_truncated"] = threads.omitted
    if locals_error is not None:
        report["locals"] = {"error": locals_error}
    elif locals_entry is not None:
        report["locals"] = locals_entry
    return report
