"""The one place that renews, in a forked child, what belongs to its parent.

A child forked from a process that runs flask-utd inherits its agent's listening
socket, its locks (possibly held by a thread that does not exist in the child),
its request records and its admin listener. Each module that keeps such state
registers one function here with :func:`renew_in_child`; :func:`after_fork` runs
them all, once per child, in the order they were registered.

It runs through :func:`os.register_at_fork` on every :func:`os.fork` (gunicorn,
``multiprocessing``), and from the uWSGI ``postfork`` hook, since uWSGI forks in C
and runs Python's fork handlers only with ``py-call-uwsgi-fork-hooks``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

log = logging.getLogger("flask_utd")

_renewers: list[Callable[[], None]] = []
#: The pid :func:`after_fork` last ran in: with both Python's fork hooks and
#: uWSGI's ``postfork``, a child is renewed once, not twice.
_renewed_in: list[int] = [os.getpid()]


def renew_in_child(renew: Callable[[], None]) -> Callable[[], None]:
    """Run ``renew`` in every forked child, before anything of flask-utd runs
    there. Usable as a decorator; registering the same function twice is harmless.

    :param renew: takes no arguments; it must not start threads or take locks of
        the parent.
    """
    if renew not in _renewers:
        _renewers.append(renew)
    return renew


def after_fork() -> None:
    """Renew everything registered, once in this process (a no-op in the process
    that imported this module, and on a second call in the same child)."""
    pid = os.getpid()
    if _renewed_in[0] == pid:
        return
    _renewed_in[0] = pid
    for renew in list(_renewers):
        try:
            renew()
        except Exception:  # a child must start whatever one module left behind
            log.exception("flask-utd: renewing %r after fork failed", renew)


os.register_at_fork(after_in_child=after_fork)
