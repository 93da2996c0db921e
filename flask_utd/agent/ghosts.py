"""Ghost threads: thread states a process inherited from its parent without the
threads themselves (DESIGN.md, hazard 1).

uWSGI forks its workers in C; unless it runs Python's fork hooks, a worker keeps
the thread states of the master's threads, and reading their stacks crashes the
worker (Python 3.11) or shows the master's stacks (3.10). The worker's postfork
hook and every dump check for them first.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection


def live_native_ids() -> set[int] | None:
    """The native ids of the threads this process really has (``/proc/self/task``)."""
    try:
        return {int(name) for name in os.listdir("/proc/self/task")}
    except OSError:
        return None


def ghost_threads() -> list[threading.Thread]:
    """Threads Python still lists that do not exist in this process.

    uWSGI forks in C; unless it is told to call Python's fork hooks, a worker keeps
    the thread states of the master's threads. ``threading.enumerate()`` still
    lists them and their native ids are not in ``/proc/self/task``. The main thread
    is left out: it is the thread that forked, alive under a new native id.

    Python's list is read before ``/proc``, and a thread counts only if it is still
    alive after: a thread that starts or ends meanwhile is never taken for a ghost
    (a ghost stays "alive" for ever, its state copied from the parent).
    """
    listed = threading.enumerate()
    tasks = live_native_ids()
    if tasks is None:
        return []
    main = threading.main_thread()
    return [
        t
        for t in listed
        if t is not main
        and t.native_id is not None
        and t.native_id not in tasks
        and t.is_alive()
    ]


def ghost_message(ghosts: Collection[threading.Thread]) -> str:
    """Why a process with ghost thread states is not dumped, and what to do."""
    names = ", ".join(sorted(repr(t.name) for t in ghosts))
    return (
        f"this process was forked without Python's fork hooks and still holds the"
        f" states of {len(ghosts)} thread(s) of its parent ({names}); reading its"
        " stacks could crash it (SIGSEGV on Python 3.11) or show the parent's"
        " stacks. Under uWSGI, add `py-call-uwsgi-fork-hooks = true` to the [uwsgi]"
        " section of uwsgi.ini."
    )
