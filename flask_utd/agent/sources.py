"""Stack sources: where the dump of a process finds the stacks it shows.

A source gives :class:`Stack` items: who runs (identity and name), the innermost
frame, the request served, whether it is flask-utd's own. The snapshot
(:mod:`.snapshot`) turns each into a report entry the same way: frames, wait
state, OS state, lock owner, locals. OS threads are the first source
(:mod:`.threads`); another kind of stack (greenlets) is one more module that
calls :func:`register`, not an edit of the snapshot.

Sources run in the agent thread, during a dump, with the GIL: they must not
block, take a lock a request thread may hold, or run the app's code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from types import FrameType
from typing import Any
from typing import Protocol

from ..core.report import Kind
from ..core.report import Own
from ..core.report import Request


@dataclass(slots=True)
class Stack:
    """One stack a source found: a thread's, or a greenlet's."""

    kind: Kind
    #: The thread's ident, or the greenlet's id.
    ident: int
    name: str
    #: The innermost frame (the snapshot walks outwards from it), or ``None``.
    frame: FrameType | None
    native_id: int | None = None
    daemon: bool | None = None
    request: Request | None = None
    #: flask-utd's own thread, and what it does (:mod:`flask_utd.core.marks`).
    own: Own | None = None
    #: Whether this is the thread taking the snapshot (on the CPU by definition).
    taking_snapshot: bool = False
    #: For a greenlet: the ident of the OS thread whose hub runs it.
    thread_ident: int | None = None
    #: A greenlet that is switched out (not running): its innermost frame is a
    #: call that waits for its hub to switch back to it, never on the CPU.
    suspended: bool = False
    #: More fields for the report entry, the source's own (added as they are).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Found:
    """What one source found in one snapshot."""

    stacks: list[Stack]
    #: How many stacks it left out (over its cap); the report says so.
    omitted: int = 0


@dataclass(frozen=True)
class SnapshotContext:
    """What every source of one snapshot shares."""

    #: ``time.monotonic()`` at the snapshot, for the requests' elapsed times.
    now: float
    #: ``sys._current_frames()``, read once per snapshot.
    thread_frames: dict[int, FrameType]
    #: The ident of the thread taking the snapshot.
    me: int
    #: Only the stacks with these idents are wanted (the watchdog's capture of
    #: the requests it watches): a source may skip the others, and the
    #: snapshot drops them.
    only: frozenset[int] | None = None


class StackSource(Protocol):
    """Something that finds stacks in this process."""

    def __call__(self, context: SnapshotContext) -> Found: ...


_sources: list[StackSource] = []


def register(source: StackSource) -> StackSource:
    """Add ``source`` to every snapshot of this process from now on, after those
    registered before (registering it again is harmless). Usable as a decorator."""
    if source not in _sources:
        _sources.append(source)
    return source


def unregister(source: StackSource) -> None:
    """Stop asking ``source`` (a no-op if it is not registered)."""
    if source in _sources:
        _sources.remove(source)


def sources() -> list[StackSource]:
    """The registered sources, in order."""
    return list(_sources)


#: The type of a source, for those defined as plain functions.
SourceFunction = Callable[[SnapshotContext], Found]
