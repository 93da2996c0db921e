"""What a thread waits on, inferred from its innermost frames and from the OS.

The states (the report's ``wait``):

``sleeping``
    in ``time.sleep``.
``waiting-lock``
    acquiring a ``Lock``, ``RLock`` or ``Semaphore`` (``.acquire()``, ``with lock:``).
``waiting-condition``
    waiting to be woken by another thread: ``Condition.wait``, ``Event.wait``,
    ``Queue.get``/``put``, ``Barrier.wait``, ``Thread.join``.
``io-socket``
    in a socket (or TLS) call: ``recv``, ``send``, ``accept``, ``connect``...
``io-select``
    in ``select``, ``poll``, ``epoll`` or a :mod:`selectors` selector.
``running``
    running Python code, or a C call that is running on the CPU.
``unknown``
    in a C call that is not one of the above and that is not running.

``time.sleep``, ``Lock.acquire`` and socket methods are written in C: they leave
no Python frame, so the innermost Python frame is the line that calls them, and
the state is read from that line's text, once the bytecode says the frame is in
a call. Everything here runs in the agent thread, never on a request path.

Under gevent a blocking call ends in gevent's code (``gevent/hub.py``'s
``sleep``, a gevent socket's ``recv``...), much of it compiled and so without
frames: the state is read from the innermost gevent frame, or from the line
that called into gevent. A greenlet that is switched out (``suspended``) waits
for its hub by definition: what its frames leave open is ``waiting-condition``.
"""

from __future__ import annotations

import dis
import os
import re
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from ..core.report import Frame

STATES = (
    "sleeping",
    "waiting-lock",
    "waiting-condition",
    "io-socket",
    "io-select",
    "running",
    "unknown",
)

#: The states the frames leave open, where the OS state (:func:`os_state`) says
#: more: on the CPU or not, and in which kernel function. In the other states the
#: frames already name the wait, and the OS could only repeat it (``S``, in a
#: futex, a timer or a socket wait).
OPEN_STATES = frozenset({"running", "unknown"})

#: Opcodes of an instruction that calls out (a C function, or ``__enter__``).
_CALL_OPS = frozenset(
    dis.opmap[name]
    for name in (
        "CALL",
        "CALL_KW",
        "CALL_FUNCTION",
        "CALL_FUNCTION_KW",
        "CALL_FUNCTION_EX",
        "CALL_METHOD",
        "PRECALL",
        "BEFORE_WITH",
        "SETUP_WITH",
    )
    if name in dis.opmap
)

_SOCKET_FUNCTIONS = frozenset(
    {
        "accept",
        "connect",
        "create_connection",
        "readinto",
        "recv",
        "recv_into",
        "recvfrom",
        "recvfrom_into",
        "recvmsg",
        "send",
        "sendall",
        "sendto",
        "sendmsg",
        "sendfile",
        "_sendfile_use_send",
        "_sendfile_use_sendfile",
    }
)

# The text of a line that calls a C function which blocks. Checked in order.
_LINE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bsleep\("), "sleeping"),
    (
        re.compile(r"\.acquire\(|^with\b.*(lock|mutex|sem)", re.IGNORECASE),
        "waiting-lock",
    ),
    (
        re.compile(r"\b(select|poll|epoll|kqueue|devpoll)\b\.?\w*\(|\.(select|poll)\("),
        "io-select",
    ),
    (
        re.compile(
            r"\.(recv|recv_into|recvfrom|recvfrom_into|recvmsg|send|sendall|sendto"
            r"|sendmsg|sendfile|accept|connect|connect_ex|do_handshake)\("
        ),
        "io-socket",
    ),
    # SimpleQueue.get / put are C (concurrent.futures' workers wait in one).
    (re.compile(r"queue\w*\.(get|put)\(", re.IGNORECASE), "waiting-condition"),
)


def _module(path: str) -> str:
    # ``os.path.basename`` costs three times as much, once per thread of a dump.
    return path.rpartition("/")[2]


#: What the innermost frame in gevent's package says, by file and function
#: (``None``: any function of that file).
_GEVENT_STATES: dict[tuple[str, str | None], str] = {
    ("hub.py", "sleep"): "sleeping",
    ("hub.py", "run"): "io-select",
    ("hub.py", None): "waiting-condition",
    ("_socketcommon.py", None): "io-socket",
    ("_socket3.py", None): "io-socket",
    ("socket.py", None): "io-socket",
    ("ssl.py", None): "io-socket",
    ("_ssl3.py", None): "io-socket",
    ("os.py", None): "io-socket",
    ("select.py", None): "io-select",
    ("selectors.py", None): "io-select",
    ("lock.py", None): "waiting-lock",
    ("_semaphore.py", None): "waiting-lock",
    ("thread.py", None): "waiting-lock",
    ("event.py", None): "waiting-condition",
    ("queue.py", None): "waiting-condition",
    ("greenlet.py", None): "waiting-condition",
    ("pool.py", None): "waiting-condition",
    ("threading.py", None): "waiting-condition",
    ("subprocess.py", None): "waiting-condition",
}


def _in_gevent(path: str) -> bool:
    return "/gevent/" in path


def _gevent_state(frames: Sequence[Frame]) -> tuple[str, int] | None:
    """The state of a stack whose innermost frame is gevent's, from that frame
    (a hub's loop, a gevent socket...), or ``None`` when gevent's file does not
    say."""
    last = len(frames) - 1
    inner = frames[last]
    module = _module(inner["file"])
    state = _GEVENT_STATES.get((module, inner["function"])) or _GEVENT_STATES.get(
        (module, None)
    )
    if state is None:
        return None
    return state, last


#: :func:`infer` reads at most this many frames, the innermost ones: a thread's
#: state depends on them alone, so a dump works it out once per distinct end
#: of stack.
INNERMOST = 4


def in_call(frame: FrameType) -> bool | None:
    """Whether ``frame`` is executing a call instruction (then, being innermost,
    it is in a C function). ``None`` when the bytecode cannot tell."""
    try:
        lasti = frame.f_lasti
        code = frame.f_code.co_code
        if lasti < 0 or lasti >= len(code):
            return None
        return code[lasti] in _CALL_OPS
    except Exception:
        return None


def infer(
    frames: Sequence[Frame],
    *,
    calling: bool | None = None,
    os_state: str | None = None,
    suspended: bool = False,
) -> tuple[str, int | None]:
    """The wait state of a thread and the index of the frame it was read from.

    :param frames: the thread's frames, outermost first (as in the report); only
        the innermost :data:`INNERMOST` are read.
    :param calling: whether the innermost frame is in a call (:func:`in_call`);
        ``None`` when unknown.
    :param os_state: the thread's state letter from ``/proc``, if known.
    :param suspended: a greenlet that is switched out: never ``running``.
    """
    if not frames:
        return "unknown", None
    if _in_gevent(frames[-1]["file"]):
        found = _gevent_state(frames)
        if found is not None:
            state, at = found
            if suspended and state == "io-select" and at == len(frames) - 1:
                # A hub switched out: it waits for the greenlet that runs.
                state = "waiting-condition"
            return state, at
        # Read the line that called into gevent, as if gevent's were C code.
        outer = len(frames) - 1
        floor = max(0, len(frames) - INNERMOST)
        while outer > floor and _in_gevent(frames[outer]["file"]):
            outer -= 1
        if not _in_gevent(frames[outer]["file"]):
            wait, index = infer(frames[: outer + 1], calling=True, suspended=suspended)
            if wait != "unknown" or index is not None:
                return wait, index
        if suspended:
            return "waiting-condition", len(frames) - 1
        return "unknown", None
    state, index = _infer_plain(frames, calling, os_state)
    if suspended and state in OPEN_STATES:
        return "waiting-condition", len(frames) - 1
    return state, index


def _infer_plain(
    frames: Sequence[Frame], calling: bool | None, os_state: str | None
) -> tuple[str, int | None]:
    last = len(frames) - 1
    inner = frames[last]
    module = _module(inner["file"])
    function = inner["function"]
    if module == "threading.py":
        if function in ("wait", "wait_for"):
            # Semaphore.acquire waits on a Condition: that is a lock to the reader.
            for i in range(last - 1, max(-1, last - INNERMOST), -1):
                if _module(frames[i]["file"]) != "threading.py":
                    break
                if frames[i]["function"] == "acquire":
                    return "waiting-lock", i
            return "waiting-condition", last
        if function in ("__enter__", "acquire"):
            return "waiting-lock", last
        if function in ("join", "_wait_for_tstate_lock"):
            return "waiting-condition", last
    elif module == "selectors.py" and function == "select":
        return "io-select", last
    elif module == "socket.py" and function in _SOCKET_FUNCTIONS:
        return "io-socket", last
    elif module == "ssl.py" and calling is not False:
        return "io-socket", last
    if calling is False:
        return "running", last
    code = inner.get("code") or ""
    for pattern, state in _LINE_PATTERNS:
        if pattern.search(code):
            return state, last
    # In a C call that is not known to block: running if the OS says so.
    if os_state == "R":
        return "running", last
    return "unknown", last if calling else None


def _read(path: str) -> bytes:
    """A small ``/proc`` file, in one read: without a file object, which costs
    a snapshot of many threads more than the read itself (docs/performance.md)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def os_state(native_id: int | None) -> tuple[str | None, str | None]:
    """The thread's state letter and ``wchan`` from ``/proc/self/task``.

    ``(None, None)`` where ``/proc`` is not there or the thread is gone.
    """
    if native_id is None:
        return None, None
    base = f"/proc/self/task/{native_id}/"
    try:
        stat = _read(base + "stat")
        # The command name, in parentheses, may hold spaces and parentheses.
        state: str | None = stat.rsplit(b")", 1)[1].split()[0].decode("ascii")
    except (OSError, IndexError, UnicodeDecodeError):
        return None, None
    wchan: str | None
    try:
        wchan = _read(base + "wchan").decode("ascii", "replace").strip()
    except OSError:
        wchan = None
    if wchan in ("", "0"):
        wchan = None
    return state, wchan


_OWNER = re.compile(r"\bowner=(\d+)")
_RLOCK_TYPES: tuple[type, ...] = (type(threading.RLock()),)
_NAME_BEFORE_ACQUIRE = re.compile(
    r"([A-Za-z_][\w.]*)\.acquire\(|^with\s+([A-Za-z_][\w.]*)\s*:"
)


def _owner(lock: Any) -> int | None:
    # The C RLock's repr names its owner; a Lock has none to tell. Exact type
    # checks: ``isinstance`` could run an object's ``__class__`` property.
    if type(lock) is threading.Condition:
        lock = lock.__dict__.get("_lock")
    if type(lock) not in _RLOCK_TYPES:
        return None
    match = _OWNER.search(repr(lock))
    owner = int(match.group(1)) if match else 0
    return owner or None


def _resolve(frame: FrameType, dotted: str) -> Any:
    """``a.b.c`` from the frame's locals or globals, through instance ``__dict__``s
    only, so that no property or ``__getattr__`` runs."""
    first, *rest = dotted.split(".")
    scope = frame.f_locals
    if first in scope:
        value = scope[first]
    elif first in frame.f_globals:
        value = frame.f_globals[first]
    else:
        return None
    for name in rest:
        try:
            namespace = object.__getattribute__(value, "__dict__")
        except AttributeError:
            return None
        if not isinstance(namespace, dict) or name not in namespace:
            return None
        value = namespace[name]
    return value


def lock_owner(frame: FrameType, code: str | None, waiter: int) -> int | None:
    """The ident of the thread that holds the ``RLock`` this frame waits for, when
    Python says (a plain ``Lock`` keeps no owner).

    :param frame: the waiting frame (the innermost one).
    :param code: its line's text.
    :param waiter: the waiting thread's ident (never its own owner).
    """
    try:
        candidates: list[Any] = []
        if _module(frame.f_code.co_filename) == "threading.py":
            # Condition.__enter__ / Semaphore: ``self`` holds the lock.
            candidates.append(frame.f_locals.get("self"))
        else:
            match = _NAME_BEFORE_ACQUIRE.search(code or "")
            if match:
                candidates.append(_resolve(frame, match.group(1) or match.group(2)))
        for lock in candidates:
            owner = _owner(lock)
            if owner is not None and owner != waiter:
                return owner
    except Exception:
        return None
    return None
