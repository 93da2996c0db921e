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
``in-call``
    in a C call that is none of the above, is not running, and that the frame
    names (:func:`call_name`): the report's ``call`` says which
    (``sqlite3.Connection.execute``).
``unknown``
    in a C call that is not one of the above, that is not running, and that
    cannot be named.

``time.sleep``, ``Lock.acquire`` and socket methods are written in C: they leave
no Python frame, so the innermost Python frame is the line that calls them, and
the state is read from that line's text, once the bytecode says the frame is in
a call. The bytecode also says what is called, as the code spells it (``db`` and
``execute``), and the frame's namespaces what that is (a ``sqlite3.Connection``):
the call is named without running any of the app's code. Everything here runs in
the agent thread, never on a request path.

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
import sys
import threading
import types
import weakref
from collections.abc import Sequence
from types import CodeType
from types import FrameType
from types import ModuleType
from typing import Any
from typing import TypeGuard

from ..core.report import Frame

STATES = (
    "sleeping",
    "waiting-lock",
    "waiting-condition",
    "io-socket",
    "io-select",
    "running",
    "in-call",
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
    """``a.b.c`` from the frame's locals or globals, through modules', classes'
    and objects' own namespaces only (:func:`_attribute`), so that no property
    or ``__getattr__`` runs."""
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
            value = _attribute(value, name)
        except (LookupError, TypeError):
            return None
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


# Naming the C function a frame is calling.

#: Opcodes that call a function (not ``with``): the callable is on the stack,
#: below the arguments. 3.11 splits a call into ``PRECALL`` and ``CALL``.
_CALLS = frozenset(
    {
        "CALL",
        "CALL_KW",
        "CALL_FUNCTION",
        "CALL_FUNCTION_KW",
        "CALL_FUNCTION_EX",
        "CALL_METHOD",
        "PRECALL",
    }
)
#: Opcodes that load the first name of a callable: a local (or a closure's
#: variable), or a global.
_FIRST_NAME = {
    "LOAD_FAST": "local",
    "LOAD_FAST_CHECK": "local",
    "LOAD_DEREF": "local",
    "LOAD_CLASSDEREF": "local",
    "LOAD_NAME": "name",
    "LOAD_GLOBAL": "global",
}
_ATTRIBUTE = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_JUMPS = frozenset(dis.hasjrel) | frozenset(dis.hasjabs)
#: The longest callable expression and arguments read back from a call.
_MAX_WINDOW = 200
#: C callables, as found in a class's namespace or bound to their object.
_C_METHODS: tuple[type, ...] = (
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
    types.WrapperDescriptorType,
    types.BuiltinFunctionType,
)

#: Where a callable's first name is looked up, and its dotted name.
Callee = tuple[str, tuple[str, ...]]


#: Modules whose frames name the wait themselves (:func:`infer`): the C call
#: inside them (a lock's ``acquire`` under ``Condition.wait``) tells no more.
_NAMED_BY_FRAME = frozenset({"threading.py", "selectors.py", "socket.py", "ssl.py"})


def names_its_call(frame: FrameType) -> bool:
    """Whether the C call of this innermost frame is worth naming: it is not in
    one of the standard library's modules whose frames name the wait."""
    return _module(frame.f_code.co_filename) not in _NAMED_BY_FRAME


def _effect(instruction: dis.Instruction) -> int:
    arg = instruction.arg if instruction.opcode >= dis.HAVE_ARGUMENT else None
    return dis.stack_effect(instruction.opcode, arg, jump=False)


def _callable_slots(call: str) -> int:
    """How many stack entries below the arguments a call takes for its callable:
    the callable and ``self`` or ``NULL``, except for 3.10's plain calls."""
    if call in ("CALL_FUNCTION", "CALL_FUNCTION_KW"):
        return 1
    if call == "CALL_FUNCTION_EX":
        return 2 if sys.version_info >= (3, 11) else 1
    return 2


def callee(code: CodeType, lasti: int) -> Callee | None:
    """What the call instruction at ``lasti`` calls, as the code spells it: where
    its first name is looked up (``"local"``, ``"global"`` or ``"name"``) and
    the dotted name (``("db", "execute")``). ``None`` when the callable is not a
    plain name with attributes (``get_db().execute``, ``handlers[0]``), or the
    bytecode cannot tell.

    The callable is pushed first and the arguments above it: walking back from
    the call, the callable's first instruction is where the stack is as deep as
    it was before the whole call. Read from the compiler's own count of each
    instruction's effect on the stack, in any Python version. Arguments that
    hold a jump (``a if b else c``, ``x or y``) are not read.
    """
    try:
        instructions = list(dis.get_instructions(code))
        at = next(i for i, ins in enumerate(instructions) if ins.offset == lasti)
    except Exception:
        return None
    first = last = at
    if instructions[at].opname not in _CALLS:
        return None
    if instructions[at].opname == "PRECALL":  # 3.11: PRECALL, then CALL
        last = at + 1
    elif at and instructions[at - 1].opname == "PRECALL":
        first = at - 1
    try:
        call = instructions[last].opname
        # After the call, its result is where the callable was: the stack is
        # one deeper than before the callable's first instruction.
        total = sum(_effect(ins) for ins in instructions[first : last + 1])
        start = None
        for i in range(first - 1, max(-1, first - 1 - _MAX_WINDOW), -1):
            if instructions[i].opcode in _JUMPS:
                return None
            total += _effect(instructions[i])
            if total == 1:
                start = i
                break
            if instructions[i].is_jump_target:
                return None  # two ways into the arguments
        if start is None:
            return None
        where = ""
        names: list[str] = []
        depth = 0
        i = start
        while i < first:
            instruction = instructions[i]
            op = instruction.opname
            if not names and op in _FIRST_NAME:
                where = _FIRST_NAME[op]
                names.append(str(instruction.argval))
            elif names and op in _ATTRIBUTE:
                names.append(str(instruction.argval))
            elif op != "PUSH_NULL":
                break
            depth += _effect(instruction)
            i += 1
        # The callable is exactly these names (not ``super().m``, ``f()()``),
        # and the arguments are pushed above it without touching it.
        if not names or depth != _callable_slots(call):
            return None
        for instruction in instructions[i:first]:
            depth += _effect(instruction)
            if depth <= _callable_slots(call):
                return None
        return where, tuple(names)
    except Exception:
        return None


#: What :func:`callee` read, by code object (its id, checked through a weak
#: reference) and instruction, kept across dumps: reading the bytecode costs
#: more than the rest of a thread's entry. Cleared when it holds this many.
_MAX_CODES = 1000
_callees: dict[int, tuple[weakref.ref[CodeType], dict[int, Callee | None]]] = {}


def cached_callee(code: CodeType, lasti: int) -> Callee | None:
    """:func:`callee`, read once per code object and instruction."""
    found = _callees.get(id(code))
    if found is None or found[0]() is not code:
        if len(_callees) >= _MAX_CODES:
            _callees.clear()
        found = _callees[id(code)] = (weakref.ref(code), {})
    by_instruction = found[1]
    if lasti not in by_instruction:
        by_instruction[lasti] = callee(code, lasti)
    return by_instruction[lasti]


# Exact type checks below, never ``isinstance`` on the app's objects: it may
# read an object's ``__class__``, which a class can make a property.


def _is_class(value: object) -> TypeGuard[type]:
    return issubclass(type(value), type)


def _type_name(cls: type) -> str:
    # Through type's own descriptors: a metaclass's property cannot run.
    module = type.__dict__["__module__"].__get__(cls)
    qualname = type.__dict__["__qualname__"].__get__(cls)
    if type(qualname) is not str:
        raise TypeError("no name")
    if type(module) is not str or module == "builtins":
        return qualname
    return f"{module}.{qualname}"


def _module_name(module: ModuleType) -> str:
    name = module.__dict__.get("__name__")
    return name if type(name) is str else "?"


def _builtin_name(function: types.BuiltinFunctionType) -> str:
    """``time.sleep``, ``socket.socket.recv``: a C function by its module, or a
    bound C method by the type of its object."""
    owner = function.__self__
    if owner is None or type(owner) is ModuleType:
        module = (
            _module_name(owner) if type(owner) is ModuleType else function.__module__
        )
        if module in (None, "builtins"):
            return function.__name__
        return f"{module}.{function.__name__}"
    if _is_class(owner):
        return f"{_type_name(owner)}.{function.__name__}"
    return f"{_type_name(type(owner))}.{function.__name__}"


def _in_class(cls: type, name: str) -> Any:
    """``name`` from the namespaces of ``cls`` and its bases, as stored (a
    descriptor is returned, not called)."""
    for base in type.__dict__["__mro__"].__get__(cls):
        namespace = type.__dict__["__dict__"].__get__(base)
        if name in namespace:
            return namespace[name]
    raise LookupError(name)


def _own_dict(value: Any) -> dict[str, Any] | None:
    """The object's own ``__dict__``, where its class keeps it the ordinary way
    (a class may make ``__dict__`` a property: that is not read)."""
    try:
        descriptor = _in_class(type(value), "__dict__")
    except LookupError:
        return None
    if type(descriptor) is not types.GetSetDescriptorType:
        return None
    namespace = descriptor.__get__(value, type(value))
    return namespace if type(namespace) is dict else None


def _attribute(value: Any, name: str) -> Any:
    """``value.name`` as stored, without running a property, a ``__getattr__``
    or a module's ``__getattr__``: from a module's namespace, a class's, or an
    object's own ``__dict__``."""
    if type(value) is ModuleType:
        return value.__dict__[name]
    if _is_class(value):
        return _in_class(value, name)
    namespace = _own_dict(value)
    if namespace is None:
        raise LookupError(name)
    return namespace[name]


def _method_name(value: Any, name: str) -> str | None:
    """The name of the C method ``value.name``, found where Python would find a
    method (in the namespace of the object's class, or of the class itself),
    unless the object's own ``__dict__`` holds that name."""
    if type(value) is ModuleType:
        # By the module it is called through: ``os.read``, not ``posix.read``.
        found = value.__dict__.get(name)
        if type(found) is types.BuiltinFunctionType:
            return f"{_module_name(value)}.{name}"
        return None
    if _is_class(value):
        found = _in_class(value, name)
        owner = value
    else:
        own = _own_dict(value)
        if own is not None and name in own:
            found = own[name]
            if type(found) is types.BuiltinFunctionType:
                return _builtin_name(found)
            return None
        owner = type(value)
        found = _in_class(owner, name)
    if type(found) in _C_METHODS:
        return f"{_type_name(owner)}.{name}"
    return None


def call_name(frame: FrameType, called: Callee) -> str | None:
    """The C function that ``frame`` is calling, named by what it is
    (``sqlite3.Connection.execute`` for ``db.execute(...)`` on a sqlite3
    connection), or ``None`` when it is not a C function or cannot be found
    safely.

    Names are looked up in the frame's locals, globals and builtins, then
    through modules', classes' and objects' own namespaces only: no property,
    ``__getattr__`` or other code of the app runs.

    :param called: what :func:`callee` read from the frame's code.
    """
    where, names = called
    first, *attributes = names
    try:
        if where != "global" and first in frame.f_locals:
            value = frame.f_locals[first]
        elif where == "local":
            return None
        elif first in frame.f_globals:
            value = frame.f_globals[first]
        elif first in frame.f_builtins:
            value = frame.f_builtins[first]
        else:
            return None
        if not attributes:
            if type(value) is types.BuiltinFunctionType:
                return _builtin_name(value)
            return None
        *path, method = attributes
        for name in path:
            value = _attribute(value, name)
        return _method_name(value, method)
    except Exception:
        return None
