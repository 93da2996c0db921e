"""The stack source of gevent's greenlets: every greenlet that serves a request,
the hub of each OS thread, and the other greenlets of the app; idle greenlets of
a gevent server (kept-alive connections waiting for their next request) counted.

Under gevent (gunicorn's gevent worker, uWSGI's gevent loop) all the requests of
a worker run in greenlets of one OS thread; the thread's own stack shows only the
greenlet running at that moment, most often the hub in ``loop.run()``. gevent
keeps no list of greenlets: like its own ``gevent.util.format_run_info``, this
source finds them among the objects the garbage collector tracks, and reads each
suspended greenlet's stack from ``gr_frame``. The running greenlet has no
``gr_frame``: its stack is its OS thread's current frame.

A hub is *blocked* when another greenlet of its thread runs and the hub's event
loop has not turned for :data:`BLOCKING_AFTER` seconds or more: that greenlet has
not yielded since (a CPU-bound loop, or a call that gevent did not patch), and
every other greenlet of the thread waits on it. The loop's clock (``loop.now()``,
updated at each turn of the loop) says since when.

The source does nothing until gevent's hub module is loaded; it never imports
gevent itself. It runs in the agent's thread: it reads attributes, calls no
greenlet's methods and creates no hub.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from datetime import datetime
from datetime import timezone
from typing import Any

from ..core import marks
from . import native
from . import sources
from . import threads  # OS threads come first in a dump: registered first
from . import tracking
from .sources import Found
from .sources import SnapshotContext
from .sources import Stack

#: Most greenlets given for one process: the running ones, the hubs and those
#: that serve a request come first. The rest are counted in
#: ``"threads_truncated"``, with the threads left out.
MAX_GREENLETS = 1000
#: A hub whose loop has not turned for this many seconds while another greenlet
#: of its thread runs is blocked by that greenlet.
BLOCKING_AFTER = 1.0

#: Where the connection greenlets of gevent's servers (``gevent.pywsgi``,
#: gunicorn's gevent workers) start: the outermost frame of an idle one.
_SERVER_HANDLERS = frozenset({("baseserver.py", "_handle_and_close_when_done")})


def _dict_of(obj: Any) -> dict[str, Any]:
    """The instance ``__dict__``, without running any property."""
    try:
        namespace = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return {}
    return namespace if isinstance(namespace, dict) else {}


def _name(greenlet: Any, thread: threading.Thread | None) -> str:
    """A name for a greenlet: the one it was given, its thread's (a patched
    :class:`threading.Thread` runs as a greenlet), or what it runs.

    gevent's ``Greenlet.name`` is not read: made up on first use, it takes an id
    from its hub's registry, which only the hub's thread may do.
    """
    given = _dict_of(greenlet).get("name")
    if isinstance(given, str):
        return given
    if thread is not None:
        return thread.name
    run = _dict_of(greenlet).get("_run")
    what = getattr(run, "__qualname__", None) or getattr(run, "__name__", None)
    kind = type(greenlet).__name__
    return f"{kind} {what}" if isinstance(what, str) else kind


def _outermost(frame: Any) -> Any:
    while frame.f_back is not None:
        frame = frame.f_back
    return frame


def _idle_in_server(frame: Any) -> bool:
    """Whether a suspended greenlet is a gevent server's connection greenlet
    (with no request: waiting for the next one)."""
    code = _outermost(frame).f_code
    return (code.co_filename.rpartition("/")[2], code.co_name) in _SERVER_HANDLERS


def _native_id(
    thread_ident: int | None, by_ident: dict[int | None, threading.Thread]
) -> int | None:
    """The OS id of the thread ``thread_ident``."""
    if thread_ident == native.main_thread_ident():
        return threads.main_native_id()
    thread = by_ident.get(thread_ident)
    return None if thread is None else thread.native_id


def _stale_for(loop: Any) -> float | None:
    """How long ago the hub's event loop last turned (read its clock), or
    ``None``."""
    try:
        last = loop.now()
    except Exception:
        return None
    # libev's clock is the wall clock; libuv's counts milliseconds on the
    # monotonic clock (gevent divides them into seconds).
    module = type(loop).__module__ or ""
    now = time.monotonic() if "libuv" in module else time.time()
    return max(0.0, now - float(last))


@sources.register
def greenlet_stacks(context: SnapshotContext) -> Found:
    """The stack source of gevent's greenlets (nothing without gevent)."""
    hub_module = sys.modules.get("gevent.hub")
    greenlet_module = sys.modules.get("greenlet")
    if hub_module is None or greenlet_module is None:
        return Found([])
    hub_type = hub_module.Hub
    greenlet_type = greenlet_module.greenlet
    everything = gc.get_objects()
    try:
        greenlets = [g for g in everything if isinstance(g, greenlet_type)]
    finally:
        del everything
    # Each hub runs in one OS thread; a greenlet belongs to the thread of the
    # hub it switches back to (its parent), a hub's parent is its thread's main
    # greenlet.
    thread_of: dict[int, int] = {}
    hubs: list[Any] = []
    for g in greenlets:
        if isinstance(g, hub_type):
            ident = g.thread_ident
            if isinstance(ident, int):
                hubs.append(g)
                thread_of[id(g)] = ident
                if g.parent is not None:
                    thread_of[id(g.parent)] = ident
    if not hubs:
        return Found([])
    by_ident: dict[int | None, threading.Thread] = {
        t.ident: t for t in threading.enumerate()
    }
    now = context.now
    wall = time.time()
    me = context.me
    first: list[Stack] = []  # running, hubs, serving a request
    rest: list[Stack] = []
    idle: dict[int, int] = {}
    running_in: dict[int, Stack] = {}
    for g in greenlets:
        if not g:  # not started yet, or finished
            continue
        parent = g.parent
        thread_ident = thread_of.get(id(g))
        if thread_ident is None and parent is not None:
            thread_ident = thread_of.get(id(parent))
            if thread_ident is None and parent.parent is not None:
                thread_ident = thread_of.get(id(parent.parent))
        frame = g.gr_frame
        running = frame is None
        if running:
            if thread_ident is None or thread_ident == me:
                continue  # a thread's own main greenlet: the thread source has it
            frame = context.thread_frames.get(thread_ident)
        is_hub = isinstance(g, hub_type)
        main = parent is None
        ident = id(g)
        request = None if main else tracking.request_of(ident, now)
        own = marks.own(ident)
        if (
            request is None
            and own is None
            and not running
            and not is_hub
            and frame is not None
            and thread_ident is not None
            and _idle_in_server(frame)
        ):
            idle[thread_ident] = idle.get(thread_ident, 0) + 1
            continue
        if is_hub:
            name = "Hub"
        elif main:
            name = "main greenlet"
        else:
            name = _name(g, by_ident.get(ident))
        extra: dict[str, Any] = {}
        native_id = None
        if running:
            extra["running"] = True
            # It runs on its thread now: the thread's OS state is its own.
            native_id = _native_id(thread_ident, by_ident)
        if is_hub:
            extra["hub"] = True
        if main:
            extra["main"] = True
        stack = Stack(
            kind="greenlet",
            ident=ident,
            name=name,
            frame=frame,
            native_id=native_id,
            request=request,
            own=own,
            thread_ident=thread_ident,
            suspended=not running,
            extra=extra,
        )
        if running and thread_ident is not None:
            running_in[thread_ident] = stack
        (first if running or is_hub or request is not None else rest).append(stack)
    for hub in hubs:
        _mark_blocked(hub, running_in, idle, wall, first)
    del greenlets, hubs
    stacks = first + rest
    omitted = max(0, len(stacks) - MAX_GREENLETS)
    return Found(stacks[:MAX_GREENLETS], omitted)


def _mark_blocked(
    hub: Any,
    running_in: dict[int, Stack],
    idle: dict[int, int],
    wall: float,
    stacks: list[Stack],
) -> None:
    """Say on the hub's entry how many idle greenlets it has, and, when another
    greenlet of its thread has kept it from turning its loop for
    :data:`BLOCKING_AFTER` or more, which one and since when (on both)."""
    thread_ident = hub.thread_ident
    entry = next((s for s in stacks if s.ident == id(hub)), None)
    if entry is None:
        return
    entry.extra["idle_greenlets"] = idle.get(thread_ident, 0)
    runner = running_in.get(thread_ident)
    loop = getattr(hub, "loop", None)
    if runner is None or runner is entry or loop is None:
        return
    stale = _stale_for(loop)
    if stale is None or stale < BLOCKING_AFTER:
        return
    since = datetime.fromtimestamp(wall - stale, timezone.utc).isoformat(
        timespec="milliseconds"
    )
    runner.extra["blocking_hub"] = {"for_s": round(stale, 3), "since": since}
    entry.extra["blocked_by"] = runner.ident
    entry.extra["blocked_for_s"] = round(stale, 3)
