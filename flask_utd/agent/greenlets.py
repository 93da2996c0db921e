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
import weakref
from datetime import datetime
from datetime import timezone
from itertools import compress
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
MAX_GREENLETS = 2000
#: Seconds between two looks for new hubs (threads that start their own).
HUBS_AGAIN_AFTER = 10.0
#: A hub whose loop has not turned for this many seconds while another greenlet
#: of its thread runs is blocked by that greenlet.
BLOCKING_AFTER = 1.0

_NO_EXTRA: dict[str, Any] = {}

#: Where the connection greenlets of gevent's servers (``gevent.pywsgi``,
#: gunicorn's gevent workers) start: the outermost frame of an idle one.
_SERVER_HANDLERS = frozenset({("baseserver.py", "_handle_and_close_when_done")})


def _subclasses(cls: type) -> set[type]:
    found = {cls}
    sub: type
    for sub in cls.__subclasses__():
        found |= _subclasses(sub)
    return found


def _greenlets_of(hubs: list[Any], greenlet_type: type) -> list[Any]:
    """The hubs, their threads' main greenlets, and every greenlet whose parent is
    one of them (all that gevent spawns), from the garbage collector.

    Found as the objects that refer to a hub or a main greenlet (a greenlet
    refers to its parent): the collector walks every object in C and hands back
    only those. A list of every object (``gc.get_objects()``, what gevent's own
    ``format_run_info`` reads) would hold a reference to each while other
    threads run, and C code may count on an object's reference count: uWSGI's
    gevent loop refills one argument tuple in place, and a worker crashed
    ("bad argument to internal function", then SIGSEGV) when it found it
    shared. The referrers are filtered by exact type, in C: ``isinstance``
    could run an object's ``__class__`` property, the app's code.
    """
    mains = [h.parent for h in hubs if h.parent is not None]
    referrers = gc.get_referrers(*hubs, *mains)
    contains = _subclasses(greenlet_type).__contains__
    found = list(compress(referrers, map(contains, map(type, referrers))))
    del referrers
    seen = set(map(id, found))
    found.extend(g for g in (*hubs, *mains) if id(g) not in seen)
    return found


#: The hubs found so far (weakly: a hub that ends is forgotten), and when
#: they were last looked for.
_hubs: weakref.WeakSet[Any] = weakref.WeakSet()
_hubs_found_at = [-HUBS_AGAIN_AFTER]


def _known_hubs(hub_type: type) -> list[Any]:
    """This process's hubs: looked for among the objects that refer to the
    ``Hub`` class (a Python class: its instances do) when none is known, or
    :data:`HUBS_AGAIN_AFTER` after the last time (a thread may have started
    one), else remembered."""
    hubs = [h for h in list(_hubs) if h]
    now = time.monotonic()
    if not hubs or now - _hubs_found_at[0] >= HUBS_AGAIN_AFTER:
        _hubs_found_at[0] = now
        referrers = gc.get_referrers(*_subclasses(hub_type))
        contains = _subclasses(hub_type).__contains__
        hubs = list(compress(referrers, map(contains, map(type, referrers))))
        del referrers
        for hub in hubs:
            _hubs.add(hub)
    return hubs


def _dict_of(obj: Any) -> dict[str, Any]:
    """The instance ``__dict__``, without running any property."""
    try:
        namespace = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return {}
    return namespace if isinstance(namespace, dict) else {}


def _name(
    greenlet: Any, thread: threading.Thread | None, names: dict[object, str]
) -> str:
    """A name for a greenlet: the one it was given, its thread's (a patched
    :class:`threading.Thread` runs as a greenlet), or what it runs (``names``
    keeps those of one snapshot).

    gevent's ``Greenlet.name`` is not read: made up on first use, it takes an id
    from its hub's registry, which only the hub's thread may do.
    """
    namespace = _dict_of(greenlet)
    given = namespace.get("name")
    if isinstance(given, str):
        return given
    if thread is not None:
        return thread.name
    run = namespace.get("_run")
    key = (type(greenlet), id(run))
    name = names.get(key)
    if name is None:
        what = getattr(run, "__qualname__", None) or getattr(run, "__name__", None)
        kind = type(greenlet).__name__
        name = names[key] = f"{kind} {what}" if isinstance(what, str) else kind
    return name


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


def _thread_of(g: Any, thread_of: dict[int, int]) -> int | None:
    """The OS thread of a greenlet: that of its hub (its parent, or its parent's
    parent), or the one whose main greenlet or hub it is."""
    for _ in range(3):
        if g is None:
            return None
        found = thread_of.get(id(g))
        if found is not None:
            return found
        g = g.parent
    return None


def _code_of(run: Any) -> Any:
    """The code object a greenlet's ``run`` starts in, when it is Python's."""
    run = getattr(run, "func", run)  # functools.partial
    run = getattr(run, "__func__", run)  # a bound method
    return getattr(run, "__code__", None)


def _running(candidates: list[Any], current: Any, hub_ids: set[int]) -> Any:
    """Which of a thread's greenlets without ``gr_frame`` runs on it now, or
    ``None``.

    A greenlet has no ``gr_frame`` while it runs, and also when it switched
    away from C code (uWSGI's main greenlet, a request that uWSGI reads in C):
    the thread's current stack tells which one it is, from its outermost frame.
    """
    if current is None:
        return None  # the thread runs C code only
    outer = _outermost(current)
    code = outer.f_code
    named = (code.co_filename.rpartition("/")[2], code.co_name)
    hubs = [g for g in candidates if id(g) in hub_ids]
    if named == ("hub.py", "run") and hubs:
        return hubs[0]
    spawned = [g for g in candidates if g.parent is not None and g not in hubs]
    matched = [g for g in spawned if _code_of(_dict_of(g).get("_run")) is code]
    if len(matched) == 1:
        return matched[0]
    if len(spawned) == 1 and not matched:
        return spawned[0]
    mains = [g for g in candidates if g.parent is None]
    if mains and code.co_name in ("<module>", "_bootstrap"):
        return mains[0]  # the thread's own first frame
    return None


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
    # getattr: a module that another thread is importing right now (gevent
    # being patched in while a dump comes) may not have its names yet.
    hub_type = getattr(sys.modules.get("gevent.hub"), "Hub", None)
    greenlet_type = getattr(sys.modules.get("greenlet"), "greenlet", None)
    if hub_type is None or greenlet_type is None:
        return Found([])
    if getattr(hub_type, "_hub_counter", 1) == 0:
        return Found([])  # gevent is loaded, but no hub was ever made
    # Each hub runs in one OS thread; a greenlet belongs to the thread of the
    # hub it switches back to (its parent), a hub's parent is its thread's main
    # greenlet.
    thread_of: dict[int, int] = {}
    hubs: list[Any] = []
    for hub in _known_hubs(hub_type):
        ident = hub.thread_ident
        if isinstance(ident, int):
            hubs.append(hub)
            thread_of[id(hub)] = ident
            if hub.parent is not None:
                thread_of[id(hub.parent)] = ident
    if not hubs:
        return Found([])
    greenlets = _greenlets_of(hubs, greenlet_type)
    by_ident: dict[int | None, threading.Thread] = {
        t.ident: t for t in threading.enumerate()
    }
    hub_ids = {id(h) for h in hubs}
    now = context.now
    wall = time.time()
    # Where each live greenlet runs, and which one runs on each thread now.
    located: list[tuple[Any, int | None, Any, Any]] = []
    frameless: dict[int, list[Any]] = {}
    for g in greenlets:
        if not g:  # not started yet, or finished
            continue
        parent = g.parent
        # Most greenlets' parent is their hub.
        thread_ident = None if parent is None else thread_of.get(id(parent))
        if thread_ident is None:
            thread_ident = _thread_of(g, thread_of)
        frame = g.gr_frame
        located.append((g, thread_ident, frame, parent))
        if frame is None and thread_ident is not None:
            frameless.setdefault(thread_ident, []).append(g)
    running_ids = {
        id(g)
        for thread_ident, candidates in frameless.items()
        if thread_ident != context.me
        for g in [
            _running(candidates, context.thread_frames.get(thread_ident), hub_ids)
        ]
        if g is not None
    }
    first: list[Stack] = []  # running, hubs, serving a request
    rest: list[Stack] = []
    idle: dict[int, int] = {}
    running_in: dict[int, Stack] = {}
    names: dict[object, str] = {}
    own_marks = marks.marked()
    request_of = tracking.request_of
    for g, thread_ident, frame, parent in located:
        ident = id(g)
        running = ident in running_ids
        if running:
            frame = context.thread_frames.get(thread_ident)  # type: ignore[arg-type]
        is_hub = ident in hub_ids
        main = parent is None
        if frame is None and (main or thread_ident is None):
            # A thread's main greenlet that runs, or that switched away from C
            # code: the thread source has its thread.
            continue
        request = None if main else request_of(ident, now)
        own = own_marks.get(ident)
        if (
            request is None
            and own is None
            and not running
            and not is_hub
            and thread_ident is not None
            and (frame is None or _idle_in_server(frame))
        ):
            # A server's connection greenlet waiting for a request, in Python
            # (gevent's servers) or in C (uWSGI reading one).
            idle[thread_ident] = idle.get(thread_ident, 0) + 1
            continue
        if is_hub:
            name = "Hub"
        elif main:
            name = "main greenlet"
        else:
            name = _name(g, by_ident.get(ident), names)
        extra = _NO_EXTRA  # read only; those written to get their own
        native_id = None
        if running or is_hub or main:
            extra = {}
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
