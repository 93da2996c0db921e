"""The agent: one thread per process that answers dump requests on a Unix socket.

The agent is per process, not per app: a process has one set of threads to dump,
so apps in one process that share a socket directory share one agent. That is the
one piece of state kept at module level here, keyed by socket path and by PID,
and dropped in a forked child, which never inherits a parent's listening socket
or thread.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass

from ..core import marks
from ..core import sockets
from ..core.fallback import FH_SUFFIX
from . import faultdump
from . import forks
from . import native
from . import watchdog
from .frame_locals import LocalsRequest
from .rpc import SERVER_CONFIG
from .server import AgentServer
from .service import AgentInfo
from .service import UTDService
from .snapshot import AGENT_THREAD_NAME

log = logging.getLogger("flask_utd")


@dataclass
class Agent:
    """The agent of this process for one socket directory."""

    pid: int
    path: str
    info: AgentInfo
    server: AgentServer
    #: A real OS thread also under gevent (:mod:`.native`).
    thread: native.NativeThread


_lock = threading.Lock()
_agents: dict[str, Agent] = {}
_atexit_pid: int | None = None


def _forget_inherited() -> None:
    """In a forked child: drop the parent's agents and close our copies of their
    listening sockets. The files stay: they belong to the parent."""
    pid = os.getpid()
    for path, agent in list(_agents.items()):
        if agent.pid != pid:
            del _agents[path]
            agent.server.forget_in_child()


def _cleanup() -> None:
    # atexit handlers are inherited through fork: only remove our own sockets.
    pid = os.getpid()
    for agent in list(_agents.values()):
        if agent.pid == pid:
            directory = os.path.dirname(agent.path)
            for path in (
                agent.path,
                sockets.stalled_note_path(directory, pid),
                sockets.watchdog_inbox_path(directory, pid),
            ):
                try:
                    os.unlink(path)
                except OSError:
                    pass
    faultdump.unregister()


def sweep(directory: str) -> None:
    """Remove what processes of this instance that are gone left behind.

    A worker killed by SIGKILL or harakiri runs no atexit, and nothing in the
    uWSGI master runs when one dies: the next process to start its agent
    clears their sockets and notes. Only files of PIDs that no longer exist go;
    a live process's socket is never touched (it may be binding right now).
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return
    me = os.getpid()
    for name in names:
        base, ext = os.path.splitext(name)
        if ext == ".new":
            # A socket still being bound (see start_agent), by a process that
            # may have been killed before it renamed it.
            base, ext = os.path.splitext(base.split(".", 1)[0] + sockets.SOCKET_SUFFIX)
        if not base.isdigit() or int(base) == me:
            continue
        if ext in (
            sockets.SOCKET_SUFFIX,
            sockets.UNSAFE_SUFFIX,
            FH_SUFFIX,
            sockets.STALLED_SUFFIX,
            sockets.WATCHDOG_SUFFIX,
        ):
            if not sockets.pid_alive(int(base)):
                try:
                    os.unlink(os.path.join(directory, name))
                except OSError:
                    pass


def _listen(binding: str, path: str) -> socket.socket:
    """A Unix socket of mode 0600 that listens on ``path``.

    It is bound under the temporary name ``binding``, set to 0600 and only then
    listens, so it accepts no connection while its mode is wider; then it is
    renamed to ``path``, so a collector never sees it bound but refusing (which
    it would take for a stale socket and remove).
    """
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(binding)
        os.chmod(binding, 0o600)
        listener.listen(socket.SOMAXCONN)
        os.rename(binding, path)
    except BaseException:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(binding)
        raise
    return listener


def start_agent(
    socket_dir: str,
    instance: str,
    *,
    role: str,
    worker_id: int | None,
    unsafe: str | None = None,
    fault_signal: int | None = None,
    locals_policy: LocalsRequest | None = None,
) -> Agent:
    """Start this process's agent for ``socket_dir`` unless it already runs.

    :param socket_dir: the ``UTD_SOCKET_DIR``.
    :param instance: the server instance (its master's pid, as text).
    :param role: ``"master"``, ``"worker"`` or ``"process"``.
    :param worker_id: the server's number for this worker, or ``None``.
    :param unsafe: why this process's stacks cannot be read safely, if so.
    :param fault_signal: register :mod:`faulthandler` on this signal, writing
        into this process's ``<pid>.fh`` (not in an unsafe process, where it could
        read the parent's thread states).
    :param locals_policy: what a dump that asks for locals gets; ``None`` (the
        default) refuses locals. Apps that share a socket directory in one
        process share its agent: the first one to start it decides.
    :raises SocketDirError: the socket directory is not private or not ours.
    """
    global _atexit_pid
    with _lock:
        _forget_inherited()
        pid = os.getpid()
        path = sockets.socket_path(socket_dir, instance, pid)
        existing = _agents.get(path)
        if existing is not None:
            return existing
        sockets.ensure_private_dir(socket_dir)
        # What instances that are gone left (a uWSGI master stopped by SIGTERM
        # runs no Python code at exit): removed by the next server to start.
        sockets.prune_gone_instances(socket_dir, keep=instance)
        directory = sockets.instance_dir(socket_dir, instance)
        sockets.ensure_private_dir(directory)
        sweep(directory)
        binding = f"{path}.{os.getpid()}.new"
        for leftover in (path, binding):
            try:
                # Left by an earlier process with our PID: no one can listen on it.
                os.unlink(leftover)
            except FileNotFoundError:
                pass
        info = AgentInfo(role, worker_id, unsafe, locals_policy)
        service = UTDService(info)
        server = AgentServer(service, _listen(binding, path), SERVER_CONFIG)

        def serve() -> None:
            # Marked by itself before it serves: it can answer a dump before
            # start_thread returns here, and would list itself as the app's.
            marks.mark(native.get_ident(), "agent")
            server.start()

        thread = native.start_thread(serve, AGENT_THREAD_NAME)
        agent = Agent(pid, path, info, server, thread)
        assert thread.ident is not None
        marks.mark(thread.ident, "agent")
        _agents[path] = agent
        if fault_signal is not None and unsafe is None:
            try:
                faultdump.register(
                    directory,
                    fault_signal,
                    thread.ident,
                    role=role,
                    worker_id=worker_id,
                )
            except (OSError, ValueError, RuntimeError):
                log.exception("flask-utd: faulthandler could not be registered")
        if _atexit_pid != pid:
            atexit.register(_cleanup)
            _atexit_pid = pid
    log.debug("flask-utd: agent of pid %d (%s) listens on %s", pid, role, path)
    return agent


def stop_agents() -> None:
    """Stop this process's agents and its watchdog, and remove their sockets
    (used by tests)."""
    watchdog.stop_watchdog()
    with _lock:
        pid = os.getpid()
        for path, agent in list(_agents.items()):
            if agent.pid == pid:
                agent.server.close()
                agent.thread.join(2)
                if agent.thread.ident is not None:
                    marks.unmark(agent.thread.ident)
                try:
                    os.unlink(path)
                except OSError:
                    pass
            del _agents[path]
        faultdump.unregister()


def leave_unsafe_note(
    socket_dir: str,
    instance: str,
    *,
    role: str,
    worker_id: int | None,
    message: str,
    pid: int | None = None,
    keep: bool = False,
) -> bool:
    """Record that a process runs no agent, and why, for the collector to report.

    :param pid: the process the note is about (default: this one); a gunicorn
        worker leaves one for its arbiter, which runs no flask-utd code.
    :param keep: leave an existing note as it is (several processes may write
        the same note at once; each sees it whole or not at all).
    :returns: whether this call wrote the note.
    """
    sockets.ensure_private_dir(socket_dir)
    sockets.ensure_private_dir(sockets.instance_dir(socket_dir, instance))
    path = sockets.unsafe_note_path(socket_dir, instance, pid or os.getpid())
    data = json.dumps({"role": role, "worker_id": worker_id, "error": message})
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
    if not keep:
        fd = os.open(path, flags | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(data)
        return True
    if os.path.lexists(path):
        return False
    # Written under a name of its own, then linked into place: link() fails if
    # the note exists, so exactly one writer puts it there, whole.
    draft = f"{path}.{os.getpid()}.new"
    fd = os.open(draft, flags | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.link(draft, path)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(draft)
    return True


@forks.renew_in_child
def after_fork_in_child() -> None:
    """Forget the parent's agents in a forked child (called on every kind of fork).

    The lock is made anew: a thread of the parent may have held it at the fork,
    and that thread does not exist here.
    """
    global _lock
    _lock = threading.Lock()
    _forget_inherited()
    marks.forget_all()
