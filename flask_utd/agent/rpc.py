"""RPyC's side of the agent: its protocol settings, and a plain RPyC client.

:data:`SERVER_CONFIG` is what the agent's RPyC connections allow. :func:`connect`
is an RPyC client with a deadline (:class:`DeadlineStream`), for scripts that want
RPyC itself; the tests use it to check the agent against RPyC's own client. The
collector does not: it speaks the little of the protocol it needs through
:mod:`flask_utd.core.wire`, which does not import RPyC. Imports RPyC, never Flask.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from rpyc.core.stream import SocketStream
from rpyc.lib import Timeout

#: RPyC settings for the agent: only ``exposed_`` names, nothing pickled, no
#: custom exceptions, no tracebacks or versions sent to the peer. Every setting
#: of RPyC's ``DEFAULT_CONFIG`` is here but the ones a connection fills in
#: itself (``connid``, ``credentials``, ``endpoints``): RPyC takes some defaults
#: from the environment (``RPYC_BIND_THREADS=true`` puts two thread ids in front
#: of every message, which no client of the agent sends), and the agent's
#: behaviour must not depend on them. ``tests/test_agent_rpyc.py`` checks that
#: nothing is missing.
SERVER_CONFIG: dict[str, Any] = {
    "allow_safe_attrs": True,
    # Only what a client needs to call an exposed method and print the result.
    "safe_attrs": frozenset({"__str__", "__repr__", "__doc__", "__eq__", "__hash__"}),
    "exposed_prefix": "exposed_",
    "allow_exposed_attrs": True,
    "allow_public_attrs": False,
    "allow_all_attrs": False,
    "allow_getattr": True,
    "allow_setattr": False,
    "allow_delattr": False,
    "allow_pickle": False,
    "import_custom_exceptions": False,
    "instantiate_custom_exceptions": False,
    "instantiate_oldstyle_exceptions": False,
    "include_local_traceback": False,
    "include_local_version": False,
    "propagate_SystemExit_locally": False,
    "propagate_KeyboardInterrupt_locally": False,
    "log_exceptions": False,
    "logger": None,
    # One frame is served at a time, in the order it came (see AgentServer).
    "bind_threads": False,
    # The agent never waits for a client: its channel refuses to (the close
    # request that RPyC sends when the agent drops a client ends at once).
    "sync_request_timeout": 1.0,
    "before_closed": None,
    "close_catchall": False,
}

#: RPyC settings for :func:`connect`: it trusts nothing that comes back either,
#: and serves nothing (the agent never calls back). All settings are pinned, as
#: in :data:`SERVER_CONFIG`: a client whose environment has
#: ``RPYC_BIND_THREADS=true`` must still speak to the agent.
CLIENT_CONFIG: dict[str, Any] = {
    "allow_safe_attrs": False,
    "safe_attrs": frozenset(),
    "exposed_prefix": "exposed_",
    "allow_exposed_attrs": False,
    "allow_public_attrs": False,
    "allow_all_attrs": False,
    "allow_getattr": False,
    "allow_setattr": False,
    "allow_delattr": False,
    "allow_pickle": False,
    "import_custom_exceptions": False,
    "instantiate_custom_exceptions": False,
    "instantiate_oldstyle_exceptions": False,
    "include_local_traceback": False,
    "include_local_version": False,
    "propagate_SystemExit_locally": False,
    "propagate_KeyboardInterrupt_locally": True,
    "log_exceptions": False,
    "logger": None,
    "bind_threads": False,
    # Replaced in each connect() by the time left before its deadline.
    "sync_request_timeout": 5.0,
    "before_closed": None,
    "close_catchall": False,
}


_CONNECT_RETRY = 0.002


class DeadlineStream(SocketStream):  # type: ignore[misc]
    """A socket stream that fails with ``EOFError`` once ``deadline`` has passed.

    RPyC's own ``SocketStream.read`` retries on a socket timeout forever; this one
    gives up at the deadline, which is what bounds a slow or silent peer.

    :param sock: a connected socket.
    :param deadline: a ``time.monotonic()`` value.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__(sock)
        self.deadline = deadline

    def _arm(self) -> None:
        """Set the socket's timeout to the time left, or end the stream."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.close()
            raise EOFError("the connection's deadline has passed")
        try:
            self.sock.settimeout(left)
        except OSError as err:  # closed under us (the server is stopping)
            self.close()
            raise EOFError(err) from err

    def poll(self, timeout: Any) -> bool:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.close()
            raise EOFError("the connection's deadline has passed")
        wanted = Timeout(timeout).timeleft()  # RPyC passes a number or a Timeout
        result: bool = super().poll(left if wanted is None else min(wanted, left))
        return result

    def read(self, count: int) -> bytes:
        chunks = []
        while count > 0:
            self._arm()
            try:
                buf = self.sock.recv(min(self.MAX_IO_CHUNK, count))
            except TimeoutError:
                continue
            except OSError as err:
                self.close()
                raise EOFError(err) from err
            if not buf:
                self.close()
                raise EOFError("connection closed by peer")
            chunks.append(buf)
            count -= len(buf)
        return b"".join(chunks)

    def write(self, data: bytes) -> None:
        self._arm()
        super().write(data)


def connect(path: str, deadline: float) -> Any:
    """Open an RPyC connection to the agent socket at ``path``, bounded by ``deadline``.

    :raises OSError: the socket refused the connection or does not exist.
    :raises EOFError: the deadline passed.
    """
    import rpyc

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EOFError("the connection's deadline has passed")
            sock.settimeout(left)
            try:
                sock.connect(path)
                break
            except BlockingIOError:
                # The agent's listen queue is full (a flood of connections):
                # a Unix socket says so at once instead of waiting.
                time.sleep(min(_CONNECT_RETRY, max(left, 0)))
    except BaseException:
        sock.close()
        raise
    config = dict(CLIENT_CONFIG, sync_request_timeout=max(left, 0.001))
    return rpyc.connect_stream(
        DeadlineStream(sock, deadline), service=rpyc.VoidService, config=config
    )
