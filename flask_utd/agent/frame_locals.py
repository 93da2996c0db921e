"""The locals of the innermost frames of a thread, shown safely.

Opt-in twice: the app sets ``UTD_LOCALS = True``, and each dump asks for them
(``flask utd dump --locals``, ``?locals=1``). Runs in the agent thread.

Safety, in order:

- Values of secret-looking names (and of secret-looking keys of dicts) are
  redacted before anything else is done with them; so is the password of a URL.
- By default (``UTD_LOCALS_REPR = "builtin"``) no object's own ``__repr__`` is
  called: values of builtin types (``None``, numbers, ``str``, ``bytes``, and
  ``list``/``tuple``/``set``/``dict`` of them, exact types only) are written by
  this module, cut short before they are formatted; any other value is shown as
  ``<module.Class object at 0x...>``. Nothing of the app's code runs, so nothing
  can raise, block, or touch an object the stuck thread is using.
- With ``UTD_LOCALS_REPR = "all"`` the other values' own ``__repr__`` is called,
  in one helper thread per dump (``utd-repr``), while the agent waits at most
  until the ``UTD_LOCALS_BUDGET`` is spent. A ``repr`` that raises shows the
  exception's type; one that is still running at the deadline is abandoned (a
  Python thread cannot be interrupted): its value shows as not finished, and
  while that helper thread is still blocked, later dumps call no ``__repr__``.
- The whole of the locals work stops at the budget: frames not reached show
  no locals, and the report says the locals are incomplete.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from types import FrameType
from typing import Any

from ..core.report import Frame
from . import native

#: Longest text of one value.
REPR_LIMIT = 200
#: Most names shown per frame, and items per container.
MAX_NAMES = 50
MAX_ITEMS = 10

#: Names whose values are never shown.
SECRET_NAME = re.compile(
    r"pass|pwd|token|secret|key|auth|cookie|session|credential|csrf|signature"
    r"|salt|private|bearer|jwt|otp|dsn",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(\w+://[^/\s:@]*:)[^@\s/]+@")
REDACTED = "<redacted>"

_SIMPLE = (type(None), bool, int, float, complex)
_CONTAINERS = (list, tuple, set, frozenset, dict)


@dataclass
class LocalsRequest:
    """What a dump asked for and what the app allows."""

    #: Innermost frames per thread.
    frames: int
    #: ``"builtin"`` or ``"all"`` (``UTD_LOCALS_REPR``).
    reprs: str
    #: Seconds for the whole of the locals of one process.
    budget: float


def describe(value: Any) -> str:
    """What ``object.__repr__`` would say, without calling anything of the value's."""
    kind = type(value)
    return f"<{kind.__module__}.{kind.__qualname__} object at {id(value):#x}>"


def _cut(text: str, limit: int = REPR_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(value: str | bytes | bytearray) -> str:
    short = value[:REPR_LIMIT]
    text = repr(short)
    if isinstance(short, str):
        text = _URL_PASSWORD.sub(r"\1" + REDACTED + "@", text)
    if len(value) > REPR_LIMIT:
        text += f"... ({len(value)} long)"
    return text


def safe_repr(value: Any, depth: int = 0) -> str | None:
    """The text of a builtin-typed value, or ``None`` for any other value.

    Never calls code of the value's own: only exact builtin types are written.
    """
    kind = type(value)
    if kind in _SIMPLE:
        if kind is int and value.bit_length() > 512:
            return f"<int of {value.bit_length()} bits>"
        return repr(value)
    if kind in (str, bytes, bytearray):
        return _text(value)
    if kind in _CONTAINERS:
        if depth >= 2:
            return f"<{kind.__name__} of {len(value)}>"
        parts: list[str] = []
        if kind is dict:
            for key, item in islice(value.items(), MAX_ITEMS):
                key_text = safe_repr(key, depth + 1) or describe(key)
                if isinstance(key, str) and SECRET_NAME.search(key):
                    parts.append(f"{key_text}: {REDACTED}")
                else:
                    item_text = safe_repr(item, depth + 1) or describe(item)
                    parts.append(f"{key_text}: {item_text}")
        else:
            for item in islice(value, MAX_ITEMS):
                parts.append(safe_repr(item, depth + 1) or describe(item))
        if len(value) > MAX_ITEMS:
            parts.append(f"... ({len(value)} items)")
        body = ", ".join(parts)
        if kind is list:
            return _cut(f"[{body}]")
        if kind is tuple:
            return _cut(f"({body}{',' if len(value) == 1 else ''})")
        if kind is dict:
            return _cut(f"{{{body}}}")
        if not value:
            return f"{kind.__name__}()"
        return _cut(f"{{{body}}}" if kind is set else f"frozenset({{{body}}})")
    return None


# The helper thread of an earlier dump whose ``__repr__`` call has not returned.
_blocked: native.NativeThread | None = None


def _call_reprs(
    values: list[Any], deadline: float
) -> tuple[dict[int, str], str | None]:
    """Each value's own ``repr``, in a helper thread, until ``deadline``.

    :returns: the texts by index, and a note when some were not made.
    """
    global _blocked
    if _blocked is not None and _blocked.is_alive():
        return {}, (
            "an earlier dump's __repr__ call is still blocked (thread utd-repr):"
            " no __repr__ was called"
        )
    results: dict[int, str] = {}
    stop: list[bool] = []  # not an Event: gevent patches those

    def run() -> None:
        for index, value in enumerate(values):
            if stop:
                return
            try:
                text = _cut(repr(value))
            except BaseException as err:  # a repr may raise anything
                text = f"<repr raised {type(err).__name__}>"
            results[index] = text

    # A real thread also under gevent (:mod:`.native`): the agent waits for it.
    helper = native.start_thread(run, "utd-repr")
    helper.join(max(0.0, deadline - time.monotonic()))
    if not helper.is_alive():
        return dict(results), None
    stop.append(True)
    _blocked = helper
    return dict(results), "UTD_LOCALS_BUDGET was spent before every __repr__ returned"


def collect_locals(
    threads: list[tuple[list[Frame], list[FrameType]]],
    ask: LocalsRequest,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Add ``"locals"`` to the innermost frames of each thread.

    :param threads: per thread, its report frames (outermost first) and the
        matching frame objects.
    :param ask: how many frames, which reprs, what budget.
    :returns: the process report's ``locals`` entry: what was asked, whether
        everything was shown, and notes.
    """
    deadline = clock() + ask.budget
    pending: list[tuple[dict[str, str], str, Any]] = []
    notes: list[str] = []
    complete = True
    for frames, objects in threads:
        if clock() > deadline:
            complete = False
            notes.append("UTD_LOCALS_BUDGET was spent before every frame was read")
            break
        start = max(0, len(frames) - ask.frames)
        for entry, frame in zip(frames[start:], objects[start:], strict=True):
            if not frame.f_code.co_flags & inspect.CO_OPTIMIZED:
                continue  # a module or class body: its locals are its globals
            shown: dict[str, str] = {}
            try:
                names = list(frame.f_locals.items())
            except Exception as err:
                entry["locals"] = {
                    "<error>": f"<locals unreadable: {type(err).__name__}>"
                }
                continue
            for name, value in names[:MAX_NAMES]:
                if SECRET_NAME.search(name):
                    shown[name] = REDACTED
                    continue
                try:
                    text = safe_repr(value)
                except Exception as err:  # e.g. a dict changed under us
                    text = f"<unreadable: {type(err).__name__}>"
                if text is None:
                    text = describe(value)
                    if ask.reprs == "all":
                        pending.append((shown, name, value))
                shown[name] = text
            if len(names) > MAX_NAMES:
                shown["..."] = f"{len(names) - MAX_NAMES} more names"
            entry["locals"] = shown
    if pending:
        texts, note = _call_reprs([value for _, _, value in pending], deadline)
        for index, (shown, name, _) in enumerate(pending):
            if index in texts:
                shown[name] = texts[index]
            elif note is not None:
                shown[name] += " (repr not finished)"
        if note is not None:
            complete = False
            notes.append(note)
    return {
        "frames": ask.frames,
        "reprs": ask.reprs,
        "complete": complete,
        "notes": notes,
    }
