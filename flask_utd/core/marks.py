"""Which threads of this process are flask-utd's own, and what they do.

The agent marks its thread ``agent``, the admin listener its thread ``admin``,
and the collector marks the thread that collects (the request thread of ``GET
/_utd/dump``, a CLI, a faulthandler fallback) ``collector`` while it does. The
dump of the process copies the mark into each thread's ``"own"``, so readers
fold these threads away without matching file paths or function names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from functools import wraps
from typing import ParamSpec
from typing import TypeVar

from .report import Own

_marks: dict[int, Own] = {}
_P = ParamSpec("_P")
_R = TypeVar("_R")


def mark(ident: int, own: Own) -> None:
    """Say that the thread ``ident`` is flask-utd's, doing ``own``."""
    _marks[ident] = own


def unmark(ident: int) -> None:
    """The thread ``ident`` no longer does flask-utd's work (or has ended)."""
    _marks.pop(ident, None)


def own(ident: int) -> Own | None:
    """What flask-utd's thread ``ident`` does, or ``None`` for the app's threads."""
    return _marks.get(ident)


def marked() -> dict[int, Own]:
    """A copy of every mark of this process."""
    return dict(_marks)


@contextmanager
def marking(what: Own) -> Iterator[None]:
    """Mark the calling thread for the duration of the block (restoring a mark
    it had before, such as a collector's inside the admin listener)."""
    ident = threading.get_ident()
    before = _marks.get(ident)
    _marks[ident] = what
    try:
        yield
    finally:
        if before is None:
            _marks.pop(ident, None)
        else:
            _marks[ident] = before


def marks_caller(what: Own) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate a function so that the thread that calls it is marked ``what``
    while it runs (:func:`marking`)."""

    def decorate(function: Callable[_P, _R]) -> Callable[_P, _R]:
        @wraps(function)
        def marked_call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with marking(what):
                return function(*args, **kwargs)

        return marked_call

    return decorate


def forget_all() -> None:
    """In a forked child: only the forking thread exists, and it is not doing
    flask-utd's work for the child."""
    _marks.clear()
