"""Stacks without the GIL, this process's side: :mod:`faulthandler` registered on a
real-time signal, writing into this process's ``<pid>.fh`` for the collector
(:mod:`flask_utd.core.fallback`) to read when the agent cannot answer."""

from __future__ import annotations

import faulthandler
import json
import os
from typing import IO
from typing import Any

from ..core.fallback import fh_path
from ..core.fallback import start_time
from . import forks

# What this process registered: (signal, pid, path, open file). One per process:
# a signal has one handler, so the first agent of a process owns it.
_registered: tuple[int, int, str, IO[str]] | None = None


def register(
    directory: str,
    signum: int,
    agent_ident: int | None,
    *,
    role: str = "process",
    worker_id: int | None = None,
) -> str | None:
    """Install faulthandler on ``signum`` in this process, writing into its own
    ``<pid>.fh`` in ``directory``; a no-op if this process already did.

    :returns: the file's path, or ``None`` if this process had registered already.
    """
    global _registered
    pid = os.getpid()
    if _registered is not None and _registered[1] == pid:
        return None
    forget_inherited()
    path = fh_path(directory, pid)
    header: dict[str, Any] = {"pid": pid, "signal": signum}
    header["start_time"] = start_time(pid)
    header.update(agent_ident=agent_ident, role=role, worker_id=worker_id)
    fd = os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW, 0o600
    )
    f = os.fdopen(fd, "w")
    f.write(json.dumps(header) + "\n")
    f.flush()
    # chain=False: the handler replaces nothing that the server relies on, since
    # the signal is a real-time one that neither uWSGI nor gunicorn uses.
    faulthandler.register(signum, file=f, all_threads=True, chain=False)
    _registered = (signum, pid, path, f)
    return path


@forks.renew_in_child
def forget_inherited() -> None:
    """In a forked child: drop the parent's registration, which would write into
    the parent's file. The child registers its own when its agent starts."""
    global _registered
    if _registered is None or _registered[1] == os.getpid():
        return
    signum, _pid, _path, f = _registered
    _registered = None
    try:
        faulthandler.unregister(signum)
    finally:
        try:
            f.close()
        except OSError:
            pass


def unregister() -> None:
    """Undo :func:`register` in this process and remove its file (used by tests
    and at exit)."""
    global _registered
    if _registered is None:
        return
    signum, pid, path, f = _registered
    if pid != os.getpid():
        forget_inherited()
        return
    _registered = None
    faulthandler.unregister(signum)
    f.close()
    try:
        os.unlink(path)
    except OSError:
        pass
