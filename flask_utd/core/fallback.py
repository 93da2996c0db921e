"""Stacks without the GIL, the collector's side: :mod:`faulthandler`'s text from a
process that did not answer.

A thread that holds the GIL in C code (a long regex, a C extension, a call through
``ctypes.PyDLL``) stops every Python thread of its process, the agent included.
:mod:`faulthandler` writes the stacks from a C signal handler and needs no GIL.

Two sides:

- In every process that runs an agent, :func:`flask_utd.agent.faultdump.register`
  installs faulthandler on
  ``SIGRTMIN + UTD_FAULTHANDLER_SIGNAL_OFFSET``, writing into ``<pid>.fh`` in the
  instance directory. The file starts with a one-line JSON header (the signal, the
  process's start time, the agent thread's ident); faulthandler appends below it.
- The collector, when a process misses its deadline, calls :func:`fallback_stacks`:
  it signals that process only if it registered (its ``.fh`` file exists, the start
  time matches, so the PID was not reused, and ``/proc/<pid>/status`` shows the
  signal as caught), waits briefly for the text, and parses it into threads.

A process that never registered is never signalled: the default action of a
real-time signal is to terminate the process (uWSGI's http router dies of it).

This module imports neither Flask nor RPyC.
"""

from __future__ import annotations

import json
import linecache
import os
import re
import signal
import time
from typing import Any

from .report import Thread

#: Suffix of the faulthandler file of a process, next to its ``.sock``.
FH_SUFFIX = ".fh"
#: A file larger than this is emptied (below its header) before the next signal.
MAX_FILE = 1 << 20


def signal_for(offset: int) -> int:
    """The signal number for ``SIGRTMIN + offset``."""
    return int(signal.SIGRTMIN) + offset


def max_offset() -> int:
    """The largest valid ``UTD_FAULTHANDLER_SIGNAL_OFFSET``."""
    return int(signal.SIGRTMAX) - int(signal.SIGRTMIN)


def fh_path(directory: str, pid: int) -> str:
    """The faulthandler file of ``pid`` in an instance directory."""
    return os.path.join(directory, f"{pid}{FH_SUFFIX}")


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat``),
    which tells a process from a later one that reuses its PID."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (``SigCgt``)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


_HEAD = re.compile(
    r"^(?P<current>Current thread|Thread) 0x(?P<ident>[0-9a-fA-F]+)"
    r"(?: \[(?P<name>.*)\])? \(most recent call first\):$"
)
_FRAME = re.compile(
    r'^ {2}File "(?P<file>.*)", line (?P<line>\d+|\?\?\?) in (?P<function>.*)$'
)


def parse(text: str, agent_ident: int | None = None) -> list[Thread]:
    """Threads with frames from faulthandler's text, frames outermost first.

    Each thread carries ``"source": "faulthandler"``: it has no request, name or
    native id, since faulthandler writes none of those (before Python 3.14).
    """
    threads: list[Thread] = []
    current: Thread | None = None
    for line in text.splitlines():
        head = _HEAD.match(line)
        if head:
            ident = int(head["ident"], 16)
            name = head["name"] or f"<thread 0x{ident:x}>"
            if head["current"] == "Current thread":
                name += " (took the signal)"
            current = {
                "ident": ident,
                "native_id": None,
                "name": name,
                "daemon": None,
                "kind": "thread",
                "is_agent": ident == agent_ident,
                "own": "agent" if ident == agent_ident else None,
                "request": None,
                "wait": "unknown",
                "wait_frame": None,
                "os_state": None,
                "wchan": None,
                "lock_owner": None,
                "frames": [],
                "source": "faulthandler",
            }
            threads.append(current)
            continue
        frame = _FRAME.match(line)
        if frame and current is not None:
            lineno = int(frame["line"]) if frame["line"].isdigit() else 0
            code = linecache.getline(frame["file"], lineno).strip() if lineno else ""
            current["frames"].append(
                {
                    "file": frame["file"],
                    "line": lineno,
                    "function": frame["function"],
                    "code": code or None,
                }
            )
    for thread in threads:
        thread["frames"].reverse()
    threads.sort(key=lambda t: t["is_agent"])
    return threads


def _read_header(path: str) -> tuple[dict[str, Any], int] | None:
    try:
        with open(path, "rb") as f:
            first = f.readline(4096)
        header = json.loads(first)
        if not isinstance(header, dict):
            return None
    except (OSError, ValueError):
        return None
    return header, len(first)


def fallback_stacks(
    directory: str, pid: int, deadline: float, settle: float = 0.05
) -> tuple[list[Thread] | None, str]:
    """Ask faulthandler in process ``pid`` for its stacks, by ``deadline``.

    :returns: ``(threads, note)``; ``threads`` is ``None`` when no stacks could be
        had, and ``note`` says why (or where the stacks came from).
    """
    path = fh_path(directory, pid)
    found = _read_header(path)
    if found is None:
        return None, "it did not register faulthandler, so it was not signalled."
    header, header_len = found
    signum = header.get("signal")
    if not isinstance(signum, int) or header.get("pid") != pid:
        return None, "its faulthandler file is not valid; it was not signalled."
    if header.get("start_time") != start_time(pid) or not catches(pid, signum):
        return None, "its faulthandler registration is gone; it was not signalled."
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE:
            os.truncate(path, header_len)
            size = header_len
        os.kill(pid, signum)
    except OSError as err:
        return None, f"it could not be signalled ({err.strerror})."
    # faulthandler writes everything at once, from its signal handler: wait
    # until the file has grown and stopped growing.
    last = size
    still_since = None
    while time.monotonic() < deadline:
        time.sleep(0.01)
        try:
            now = os.path.getsize(path)
        except OSError:
            break
        if now != last:
            last, still_since = now, time.monotonic()
        elif now > size and still_since and time.monotonic() - still_since >= settle:
            break
    if last <= size:
        return None, "it was signalled but faulthandler wrote nothing in time."
    with open(path, "rb") as f:
        f.seek(size)
        text = f.read(last - size).decode("utf-8", "replace")
    agent_ident = header.get("agent_ident")
    threads = parse(text, agent_ident if isinstance(agent_ident, int) else None)
    if not threads:
        return None, "it was signalled but faulthandler's text could not be read."
    return threads, (
        "the stacks below were written by faulthandler (SIGRTMIN+"
        f"{signum - int(signal.SIGRTMIN)}), which needs no GIL: thread names,"
        " requests and wait states are not known."
    )
