"""The dump of one process: every stack its sources find (:mod:`.sources`), each
with its frames, its request, its wait state and, where it tells more, its OS state.

Runs in the agent thread of the process being dumped, never in a request thread.
"""

from __future__ import annotations

import linecache
import os
import time
from types import CodeType
from types import FrameType
from typing import Any

from ..core.report import Frame
from ..core.report import Process
from ..core.report import Thread
from ..core.report import process_entry
from . import greenlets as _greenlets  # noqa: F401  (then gevent's greenlets)
from . import native
from . import threads as _threads  # noqa: F401  (registers the first source)
from . import waits
from .frame_locals import LocalsRequest
from .frame_locals import collect_locals
from .ghosts import ghost_message
from .ghosts import ghost_threads
from .sources import SnapshotContext
from .sources import Stack
from .sources import sources
from .threads import current_frames

#: Name given to the agent thread of every process.
AGENT_THREAD_NAME = "utd-agent"

#: Most frames given for one thread: the innermost ones (where the thread is
#: now). A thread with more has ``"frames_truncated"``: how many outer frames
#: were left out.
MAX_FRAMES = 200
#: Longest source line given as a frame's ``"code"``; a longer one is cut and
#: ends with "...".
MAX_CODE_CHARS = 200


class ThreadReports(list[Thread]):
    """The thread entries of a process, and how many threads were left out."""

    omitted: int = 0


def _frame_entry(code: CodeType, lineno: int | None) -> Frame:
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
    memo: dict[int, dict[int, Frame]],
    *,
    shared: bool = True,
) -> tuple[list[Frame], list[FrameType], int]:
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
    frames: list[Frame] = []
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
        frames = [entry.copy() for entry in frames]
        frame = innermost
        while frame is not None and len(objects) < len(frames):
            objects.append(frame)
            frame = frame.f_back
    frames.reverse()
    if not shared:
        objects.reverse()
    return frames, objects, omitted


#: What the innermost frames of a stack tell, shared by the stacks that end in
#: the same frames: the wait, the frame it was read from (counted from the
#: innermost), whether the innermost frame is in a call, and what it calls.
_End = tuple[str, int | None, bool | None, waits.Callee | None]


def _read_end(
    frame: FrameType | None, frames: list[Frame], suspended: bool = False
) -> _End:
    """:func:`waits.infer`, with the frame it was read from counted from the
    innermost (0), so that threads with other outer frames can share it;
    ``calling``; and the callee of the innermost frame's call
    (:func:`waits.cached_callee`), where naming it tells something: not in a
    switched-out greenlet, whose innermost call is always the switch to its
    hub (and naming it took a third of the snapshot of 1,000 greenlets)."""
    calling = None if frame is None else waits.in_call(frame)
    wait, index = waits.infer(frames, calling=calling, suspended=suspended)
    called = None
    if calling and not suspended and frame is not None and waits.names_its_call(frame):
        called = waits.cached_callee(frame.f_code, frame.f_lasti)
    return wait, None if index is None else len(frames) - 1 - index, calling, called


def _entry(
    stack: Stack,
    memo: dict[int, dict[int, Frame]],
    ends: dict[tuple[object, ...], _End],
    global_calls: dict[tuple[object, ...], str | None],
    shared: bool,
) -> tuple[Thread, list[FrameType]]:
    """The report entry of one stack, and its frame objects when locals are asked
    for (not ``shared``)."""
    frame = stack.frame
    frames, objects, omitted = _frame_stack(frame, memo, shared=shared)
    # Stacks that end in the same frames (the same instructions, so the same
    # entries) wait on the same thing: the state is inferred once per distinct
    # end of stack.
    end: tuple[object, ...] = tuple(map(id, frames[-waits.INNERMOST :]))
    if stack.suspended:
        end += ("suspended",)  # a switched-out greenlet is never running
    inferred = ends.get(end)
    if inferred is None:
        inferred = ends[end] = _read_end(frame, frames, stack.suspended)
    wait, from_end, calling, called = inferred
    wait_frame = None if from_end is None else len(frames) - 1 - from_end
    # The OS state only where it tells more than the frames: reading it costs
    # more than walking a 20-frame stack (docs/diagnosis.rst). A greenlet has
    # no native id of its own, and no OS state.
    os_state = wchan = None
    if stack.taking_snapshot:
        os_state = "R"
    elif stack.native_id is not None and (
        stack.request is not None or wait in waits.OPEN_STATES
    ):
        os_state, wchan = waits.os_state(stack.native_id)
        if wait == "unknown":
            wait, wait_frame = waits.infer(frames, calling=calling, os_state=os_state)
    owner = None
    if wait == "waiting-lock" and frames and frame is not None:
        owner = waits.lock_owner(frame, frames[-1]["code"], stack.ident)
    # The C function the innermost frame is in, by name: looked up in the
    # thread's own locals, or once per end of stack for a global (the same code
    # has the same globals).
    call = None
    if called is not None and frame is not None:
        if called[0] != "global":
            call = waits.call_name(frame, called)
        elif end in global_calls:
            call = global_calls[end]
        else:
            call = global_calls[end] = waits.call_name(frame, called)
        if call is not None and wait == "unknown":
            wait = "in-call"
    entry: Thread = {
        "ident": stack.ident,
        "native_id": stack.native_id,
        "name": stack.name,
        "daemon": stack.daemon,
        "kind": stack.kind,
        "own": stack.own,
        "is_agent": stack.own == "agent",
        "request": stack.request,
        "wait": wait,
        "wait_frame": wait_frame,
        "os_state": os_state,
        "wchan": wchan,
        "lock_owner": owner,
        "call": call,
        "frames": frames,
    }
    if stack.thread_ident is not None:
        entry["thread_ident"] = stack.thread_ident
    if omitted:
        entry["frames_truncated"] = omitted
    entry.update(stack.extra)  # type: ignore[typeddict-item]
    return entry, objects


def thread_reports(
    locals_request: LocalsRequest | None = None,
) -> tuple[ThreadReports, dict[str, Any] | None]:
    """One entry per stack that the registered sources find (OS threads first,
    :mod:`.threads`), and the report's ``locals`` entry when locals were asked
    for. flask-utd's own threads come last: they are never the interesting ones.

    Only call this when :func:`ghost_threads` is empty: with ghost thread states,
    ``sys._current_frames()`` can crash the process (Python 3.11) or answer with a
    stack that belongs to the parent (3.10).

    :param locals_request: show the locals of the innermost frames (never of
        flask-utd's own threads).
    """
    context = SnapshotContext(
        now=time.monotonic(), thread_frames=current_frames(), me=native.get_ident()
    )
    with_locals: list[tuple[list[Frame], list[FrameType]]] = []
    threads = ThreadReports()
    own: list[Thread] = []
    memo: dict[int, dict[int, Frame]] = {}
    ends: dict[tuple[object, ...], _End] = {}
    global_calls: dict[tuple[object, ...], str | None] = {}
    shared = locals_request is None
    try:
        for source in sources():
            found = source(context)
            threads.omitted += found.omitted
            for stack in found.stacks:
                entry, objects = _entry(stack, memo, ends, global_calls, shared)
                if stack.own is not None:
                    own.append(entry)
                    continue
                threads.append(entry)
                if not shared:
                    with_locals.append((entry["frames"], objects))
            del found
        locals_entry = None
        if locals_request is not None:
            locals_entry = collect_locals(with_locals, locals_request)
    finally:
        # Frame objects keep every local of every stack alive: drop them now.
        del context, with_locals, memo, global_calls
    threads.extend(own)
    return threads, locals_entry


def stack_reports(idents: set[int]) -> dict[int, Thread]:
    """The entries of the stacks with these idents (threads' idents; greenlets'
    ids), by ident; those no source has are left out.

    The watchdog's capture of the requests it watches: built by the sources and
    the same entry code as a whole dump, for those stacks only, in one pass (a
    source of greenlets walks them all once, whatever the number wanted). The
    same rule as for :func:`thread_reports` holds: never where
    :func:`ghost_threads` finds any.
    """
    found: dict[int, Thread] = {}
    if not idents:
        return found
    context = SnapshotContext(
        now=time.monotonic(),
        thread_frames=current_frames(),
        me=native.get_ident(),
        only=frozenset(idents),
    )
    memo: dict[int, dict[int, Frame]] = {}
    try:
        for source in sources():
            for stack in source(context).stacks:
                if stack.ident in idents and stack.ident not in found:
                    entry, _objects = _entry(stack, memo, {}, {}, True)
                    found[stack.ident] = entry
    finally:
        del context  # the frames keep every local of every thread alive
    return found


def process_report(
    *,
    role: str,
    worker_id: int | None,
    unsafe: str | None = None,
    locals_request: LocalsRequest | None = None,
    locals_error: str | None = None,
) -> Process:
    """The ``flask-utd/1`` entry of this process.

    :param role: ``"master"``, ``"worker"`` or ``"process"``.
    :param worker_id: the server's number for this worker, or ``None``.
    :param unsafe: why stacks cannot be read safely here; the report then has
        status ``"unsafe"`` and no threads.
    :param locals_request: show the locals of each thread's innermost frames.
    :param locals_error: locals were asked for and refused: why.
    """
    if unsafe is None:
        ghosts = ghost_threads()
        if ghosts:
            unsafe = ghost_message(ghosts)
    if unsafe is not None:
        return process_entry(
            os.getpid(), role=role, worker_id=worker_id, status="unsafe", error=unsafe
        )
    threads, locals_entry = thread_reports(locals_request)
    report = process_entry(os.getpid(), role=role, worker_id=worker_id)
    report["threads"] = threads
    if threads.omitted:
        report["threads_truncated"] = threads.omitted
    if locals_error is not None:
        report["locals"] = {"error": locals_error}
    elif locals_entry is not None:
        report["locals"] = locals_entry
    return report
