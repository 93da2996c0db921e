"""The agent's RPyC server: one thread, one poll loop, a few clients at once.

The loop waits on the listening socket and on every client with a selector and
never blocks on any one client; see :class:`AgentServer`. It owns its socket and
its loop, and takes from RPyC only its public pieces: a connection per client
made by :func:`rpyc.utils.factory.connect_channel`, over a
:class:`~rpyc.core.channel.Channel` that the loop feeds with the frames it cut
(with :data:`flask_utd.core.wire.FRAME_HEADER` and
:data:`~flask_utd.core.wire.FLUSHER`, which the tests check against what RPyC
writes). The two questions without arguments, ``info`` and ``stats``, may come
as a plain frame instead (:data:`flask_utd.core.wire.PLAIN_QUESTIONS`): the
loop answers those itself from the same service, with no RPyC connection.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
import zlib
from collections import deque
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from rpyc.core.channel import Channel
from rpyc.core.service import Service
from rpyc.core.stream import Stream
from rpyc.utils.factory import connect_channel

from ..core import sockets
from ..core.wire import FLUSHER
from ..core.wire import FRAME_HEADER
from ..core.wire import PLAIN_QUESTIONS
from ..core.wire import frame as wire_frame
from . import native

log = logging.getLogger("flask_utd")

#: How many clients the agent serves at once (see :class:`AgentServer`).
MAX_CLIENTS = 16
#: How many of them may come from one process.
MAX_CLIENTS_PER_PEER = 4
#: How long a client has to send a complete request, after connecting or after
#: its previous request, in seconds.
REQUEST_DEADLINE = 1.0
#: How long one connection may last, whatever the client does, in seconds.
CONNECTION_DEADLINE = 5.0
#: Largest RPyC frame the agent takes from a client, in bytes (also after
#: decompression). A dump request is a few hundred bytes.
MAX_FRAME = 64 * 1024
_SEND_CHUNK = 256 * 1024
_RECV_CHUNK = 64 * 1024
#: The service's method that answers each plain question.
_PLAIN = {question: f"exposed_{name}" for name, question in PLAIN_QUESTIONS.items()}


def _peer_pid(sock: socket.socket) -> int:
    """The pid of the process at the other end of ``sock`` (``SO_PEERCRED``).

    :raises PermissionError: the peer runs as neither this uid nor root.
    """
    pid, uid, _gid = sockets.peer_credentials(sock)
    if not sockets.uid_allowed(uid):
        raise PermissionError(f"a peer of uid {uid} is not allowed")
    return pid


class _Outbox(Stream):  # type: ignore[misc]
    """The stream under a :class:`_LoopChannel`: what RPyC writes is kept for the
    agent's loop to send when the socket can take it. Nothing is read from it:
    the loop reads the socket."""

    __slots__ = ("data", "_closed")
    #: How much :meth:`Channel.send` writes at once (RPyC's socket streams
    #: have it too); all of it goes to :attr:`data` anyway.
    MAX_IO_CHUNK = 64000

    def __init__(self) -> None:
        self.data = bytearray()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True

    def fileno(self) -> int:
        raise EOFError("the agent's channels have no file")

    def poll(self, timeout: Any) -> bool:
        raise EOFError("the agent does not wait on a client")

    def read(self, count: int) -> bytes:
        raise EOFError("the agent does not wait on a client")

    def write(self, data: bytes) -> None:
        self.data += data


class _LoopChannel(Channel):  # type: ignore[misc]
    """An RPyC channel fed by the agent's loop, which never blocks on a client.

    The loop reads bytes, cuts them into frames itself (bounded in size, also
    after decompression) and queues them here; RPyC only ever finds a complete
    frame waiting. Anything that would wait for more from the client (a nested
    request back to it) ends the connection instead. What RPyC sends goes
    through :meth:`Channel.send` unchanged, into an :class:`_Outbox`.
    """

    __slots__ = ("frames",)

    def __init__(self) -> None:
        super().__init__(_Outbox(), compress=True)
        self.frames: deque[bytes] = deque()

    def poll(self, timeout: Any) -> bool:
        if self.frames:
            return True
        raise EOFError("the agent does not wait on a client")

    def recv(self) -> bytes:
        if not self.frames:
            raise EOFError("the agent does not wait on a client")
        return self.frames.popleft()


class _Drop(Exception):
    """This client is cut off: the reason, for the debug log."""


@dataclass(eq=False)
class _Client:
    """One connection the agent serves."""

    sock: socket.socket
    #: The pid of the peer process (``SO_PEERCRED``).
    peer: int
    #: ``time.monotonic()`` at accept: the whole connection ends at
    #: :data:`CONNECTION_DEADLINE` after it.
    accepted: float
    #: When the next complete request must have arrived.
    request_due: float
    #: When it was accepted or its last request was served.
    quiet_since: float
    inbox: bytearray = field(default_factory=bytearray)
    channel: _LoopChannel = field(default_factory=lambda: _LoopChannel())
    #: The RPyC connection, made at the first complete frame.
    conn: Any = None
    #: Whether a request of it was served.
    served: bool = False
    #: Answered a plain question: closed once the answer is sent.
    answered: bool = False

    @property
    def deadline(self) -> float:
        return min(self.accepted + CONNECTION_DEADLINE, self.request_due)


def _cut_frame(inbox: bytearray) -> bytes | None:
    """Take the first complete RPyC frame off ``inbox``, or return ``None``.

    A frame is a :data:`~flask_utd.core.wire.FRAME_HEADER` (length, compressed
    flag), the data, a :data:`~flask_utd.core.wire.FLUSHER`, as
    :class:`rpyc.core.channel.Channel` writes it.

    :raises _Drop: the frame is larger than :data:`MAX_FRAME`, before or after
        decompression, does not decompress, or is empty.
    """
    if len(inbox) < FRAME_HEADER.size:
        return None
    length, compressed = FRAME_HEADER.unpack_from(inbox)
    if length > MAX_FRAME:
        raise _Drop(f"a frame of {length} bytes (at most {MAX_FRAME})")
    start = FRAME_HEADER.size
    end = start + length + len(FLUSHER)
    if len(inbox) < end:
        return None
    data = bytes(inbox[start : start + length])
    del inbox[:end]
    if compressed:
        inflate = zlib.decompressobj()
        try:
            data = inflate.decompress(data, MAX_FRAME)
        except zlib.error as err:
            raise _Drop(f"a frame that does not decompress ({err})") from err
        if inflate.unconsumed_tail:
            raise _Drop(f"a frame of more than {MAX_FRAME} bytes decompressed")
    if not data:
        raise _Drop("an empty frame")
    return data


class AgentServer:
    """The agent's RPyC server: one thread, one poll loop, a few clients at once.

    The loop in :meth:`start` waits on the listening socket and on every client
    with a selector, and never blocks on any one client: it reads what a client
    sent, cuts it into frames itself, lets the client's RPyC connection answer
    each complete frame (the dump runs right there, in the agent thread), and
    sends the answer as the client takes it. So:

    - at most :data:`MAX_CLIENTS` clients are served at once, at most
      :data:`MAX_CLIENTS_PER_PEER` of one process; when a new client finds no
      place, the oldest client that has not sent a complete request yet (of the
      same process if that one has its share) is closed to make room, else the
      client quiet longest; when every client waits for an answer to be sent,
      the new client is closed;
    - a client must send each complete request within :data:`REQUEST_DEADLINE`
      (of connecting, or of its previous request), and is cut at
      :data:`CONNECTION_DEADLINE` whatever it does;
    - a frame larger than :data:`MAX_FRAME` (also after decompression), bytes
      that are not RPyC, and a peer of another uid end the connection at once.

    :param service: the RPyC service that every connection serves (one
        instance for all).
    :param listener: a listening Unix socket; the server owns it from now on
        and closes it in :meth:`close`.
    :param config: the RPyC settings of every connection
        (:data:`flask_utd.agent.rpc.SERVER_CONFIG`); ``credentials`` is set to
        the peer's pid.
    """

    def __init__(
        self, service: Service, listener: socket.socket, config: dict[str, Any]
    ) -> None:
        self.service = service
        # Under gevent, everything the loop waits on or sleeps in is the
        # standard library's (:mod:`.native`): the agent's thread never waits on
        # the hub that a stuck greenlet blocks.
        self.listener = native.unpatched_socket(listener)
        self.config = dict(config)
        #: Whether the loop should go on; :meth:`close` clears it.
        self.active = True
        self._closed = False
        listener.setblocking(False)
        self._clients: set[_Client] = set()
        self._wake_r, self._wake_w = native.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = native.default_selector()
        self._close_lock = native.allocate_lock()
        self._looping = False

    # -- the loop ---------------------------------------------------------

    def start(self) -> None:
        """Serve until :meth:`close` (run in the agent thread)."""
        with self._close_lock:
            if self._closed:
                return
            self._looping = True
        try:
            self._selector.register(self.listener, selectors.EVENT_READ, "listener")
            self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            while self.active:
                try:
                    self._turn()
                except Exception:
                    # A bug must not end the agent: say so, breathe, go on.
                    if self.active:
                        log.exception("flask-utd: error in the agent's loop")
                        native.sleep(0.1)
        except Exception:
            if self.active:
                log.exception("flask-utd: the agent stopped on an error")
        finally:
            with self._close_lock:
                self._looping = False
                self._close_all()

    def _turn(self) -> None:
        """One turn of the loop: wait for the next event or deadline, handle it."""
        now = time.monotonic()
        if self._clients:
            due = min(c.deadline for c in self._clients)
            events = self._selector.select(max(0.0, min(due - now, 1.0)))
        else:
            # Idle: block until a client connects or close() wakes the loop.
            # No timeout, so an idle agent never wakes up (docs/performance.md).
            events = self._selector.select(None)
        accept = False
        # Clients first: a request already here is answered before new
        # connections can take its place.
        for key, mask in events:
            if key.data == "listener":
                accept = True
            elif key.data == "wake":
                try:
                    self._wake_r.recv(64)
                except OSError:
                    pass
            elif isinstance(key.data, _Client):
                client = key.data
                try:
                    if mask & selectors.EVENT_READ:
                        self._receive(client)
                    else:
                        self._pump(client)
                except (_Drop, OSError, EOFError) as err:
                    self._drop(client, str(err))
                except Exception:
                    log.exception("flask-utd: the agent failed to serve a client")
                    self._drop(client, "an error in the agent")
        if accept and self.active:
            self._accept_some()
        now = time.monotonic()
        for client in list(self._clients):
            if client.deadline <= now:
                self._drop(client, "its deadline passed")

    def _accept_some(self) -> None:
        # A bounded batch, so that a flood cannot keep the loop from its clients.
        for _ in range(64):
            try:
                sock, _addr = native.accept(self.listener)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if self.active:
                    log.debug("flask-utd: the agent's accept failed: %s", err)
                return
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            peer = _peer_pid(sock)
        except OSError as err:
            log.debug("flask-utd: the agent refused a peer: %s", err)
            sock.close()
            return
        # Room is made by closing a client that waits for nothing from the
        # agent, of the same peer process when that one has its share, else of
        # anyone when the agent is full: first one that never sent a complete
        # request, oldest first, then the one that has been quiet longest. A
        # flood from one process so evicts itself, while the collector (another
        # process) gets through.
        mine = [c for c in self._clients if c.peer == peer]
        if len(mine) >= MAX_CLIENTS_PER_PEER:
            candidates = mine
        elif len(self._clients) >= MAX_CLIENTS:
            candidates = list(self._clients)
        else:
            candidates = []
        if candidates:
            idle = [c for c in candidates if not c.channel.stream.data]
            if not idle:
                log.debug("flask-utd: the agent is busy; a new client was closed")
                sock.close()
                return
            victim = min(idle, key=lambda c: (c.served, c.quiet_since))
            self._drop(victim, "room for a new client")
        now = time.monotonic()
        client = _Client(
            sock=sock,
            peer=peer,
            accepted=now,
            request_due=now + REQUEST_DEADLINE,
            quiet_since=now,
        )
        self._clients.add(client)
        self._selector.register(sock, selectors.EVENT_READ, client)
        try:
            # The request of a client that writes right after connecting is
            # often already here: answer it before anything can evict it.
            self._receive(client)
        except (_Drop, OSError, EOFError) as err:
            self._drop(client, str(err))
        except Exception:
            log.exception("flask-utd: the agent failed to serve a client")
            self._drop(client, "an error in the agent")

    def _connection(self, client: _Client) -> Any:
        """The client's RPyC connection, made at its first complete frame (a
        flood of connections that send nothing costs no RPyC objects)."""
        if client.conn is None:
            config = dict(self.config, credentials=client.peer)
            client.conn = connect_channel(
                client.channel, service=self.service, config=config
            )
        return client.conn

    def _receive(self, client: _Client) -> None:
        try:
            data = client.sock.recv(_RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            raise _Drop("the client closed the connection")
        client.inbox += data
        self._pump(client)

    def _pump(self, client: _Client) -> None:
        """Send what is waiting; when nothing is, answer the next complete request.

        One request at a time, and nothing is read from a client while an answer
        to it waits to be sent: a client that asks without reading holds one
        answer in memory, not many.
        """
        out = client.channel.stream.data
        while True:
            while out:
                try:
                    sent = client.sock.send(out[:_SEND_CHUNK], socket.MSG_NOSIGNAL)
                except (BlockingIOError, InterruptedError):
                    break
                del out[:sent]
            if out:
                break
            if client.answered:
                self._drop(client, "a plain question was answered")
                return
            frame = _cut_frame(client.inbox)
            if frame is None:
                break
            method = _PLAIN.get(frame) if client.conn is None else None
            if method is not None:
                # info or stats: no RPyC connection, one frame back, then close.
                answer = getattr(self.service, method)()
                out += wire_frame(answer.encode("utf-8"))
                client.answered = True
                continue
            client.channel.frames.append(frame)
            conn = self._connection(client)
            try:
                conn.serve(0)
            except Exception as err:
                raise _Drop(f"not an RPyC request ({type(err).__name__})") from err
            if conn.closed:
                raise _Drop("the client asked to close")
            client.served = True
            client.quiet_since = time.monotonic()
            client.request_due = client.quiet_since + REQUEST_DEADLINE
        events = selectors.EVENT_WRITE if out else selectors.EVENT_READ
        if self._selector.get_key(client.sock).events != events:
            self._selector.modify(client.sock, events, client)

    def _drop(self, client: _Client, why: str) -> None:
        log.debug("flask-utd: the agent closes a client: %s", why)
        self._clients.discard(client)
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()
        client.channel.frames.clear()
        if client.conn is not None:
            try:
                # RPyC's close asks the peer to close too; the channel refuses
                # to wait for its answer, and the socket is already closed.
                client.conn.close()
            except Exception:
                pass

    # -- stopping ---------------------------------------------------------

    def close(self) -> None:
        """Stop serving: the loop closes the listener and every client on its way
        out (or this does, when no loop runs)."""
        with self._close_lock:
            if self._closed:
                return
            self.active = False
            if self._looping:
                try:
                    self._wake_w.send(b"x")
                except OSError:
                    pass
                return
            self._close_all()

    def _close_all(self) -> None:
        if self._closed:
            return
        self.active = False
        for client in list(self._clients):
            self._drop(client, "the agent stops")
        self._selector.close()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()
        self._closed = True

    def forget_in_child(self) -> None:
        """In a forked child: close the copies of the parent's sockets, sending
        nothing; the parent's loop goes on serving them."""
        self.active = False
        self._closed = True
        for client in self._clients:
            client.sock.close()
        self._clients.clear()
        for closable in (self._selector, self.listener, self._wake_r, self._wake_w):
            try:
                closable.close()
            except OSError:
                pass
