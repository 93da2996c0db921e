"""A minimal RPyC client: just enough of RPyC's wire protocol to call ``dump``.

The collector asks every agent for one thing: ``root.dump(options)``, a string
in, a string out. ``import rpyc`` alone costs about 90 ms, which is more than
half of what a lean dump may take (see docs/performance.md), so the collector
speaks the few messages it needs itself, to the agent's RPyC connections:

- the channel: frames of a :data:`FRAME_HEADER` (length, zlib-compressed flag),
  the payload, then :data:`FLUSHER`;
- a message: one byte (``MSG_REQUEST`` 1, ``MSG_REPLY`` 2, ``MSG_EXCEPTION`` 3)
  then, in brine, ``(seq, body)``; a request's body is ``(handler, boxed args)``;
- brine, RPyC's serializer, for ``None``, ``bool``, ``int``, ``float``,
  ``bytes``, ``str`` and ``tuple`` (nothing else is sent or accepted);
- two requests: ``HANDLE_GETROOT`` (answers a reference to the service) and
  ``HANDLE_CALLATTR`` on that reference with ``"dump"``, which RPyC checks and
  resolves exactly as it does ``root.dump(...)`` (only ``exposed_`` names).

The two questions without arguments, ``info`` and ``stats``, skip RPyC: the
first frame is one of :data:`PLAIN_QUESTIONS`, which is not an RPyC message
(RPyC's first byte is a message type, 1 to 3), and the agent answers with one
frame holding the JSON text its service returns, then closes. One round trip
instead of two, and no RPyC connection in the agent: that is most of what a
Prometheus scrape of many processes costs (docs/performance.md).

:func:`call_all` makes the calls to every agent at once from one thread, each
socket non-blocking under one selector. Nothing that comes back is ever turned
into a reference or an object: a reply that is not plain data is an error. The
agent side is RPyC's own protocol, used through its public API
(:mod:`flask_utd.agent.server`, which cuts frames with the constants here); the
tests check these constants against RPyC's and this client against the agent.

Imports neither RPyC nor Flask.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

# RPyC's constants that this client uses, by their names in rpyc.core.consts
# and rpyc.core.brine (tests/test_wire.py checks them against RPyC's).
MSG_REQUEST = 1
MSG_REPLY = 2
MSG_EXCEPTION = 3
LABEL_VALUE = 1
LABEL_TUPLE = 2
LABEL_LOCAL_REF = 3
LABEL_REMOTE_REF = 4
HANDLE_GETROOT = 3
HANDLE_CALLATTR = 8

TAG_NONE = 0x00
TAG_EMPTY_STR = 0x01
TAG_EMPTY_TUPLE = 0x02
TAG_TRUE = 0x03
TAG_FALSE = 0x04
TAG_UNICODE = 0x08
#: Bytes of 1 to 4 bytes are tagged ``TAG_STR1`` to ``TAG_STR4`` (0x0D).
TAG_STR1 = 0x0A
TAG_STR_L1 = 0x0E
TAG_STR_L4 = 0x0F
#: Tuples of 1 to 4 items are tagged ``TAG_TUP1`` to ``TAG_TUP4`` (0x13).
TAG_TUP1 = 0x10
TAG_TUP_L1 = 0x14
TAG_TUP_L4 = 0x15
TAG_INT_L1 = 0x16
TAG_INT_L4 = 0x17
TAG_FLOAT = 0x18
#: An int ``n`` with ``IMM_INT_MIN <= n < IMM_INT_MAX`` is the one byte
#: ``n + IMM_INT_BIAS`` (brine's ``IMM_INTS``).
IMM_INT_MIN = -0x30
IMM_INT_MAX = 0xA0
IMM_INT_BIAS = 0x50

#: A frame's header: the length of its data, and whether the data is
#: zlib-compressed (``rpyc.core.channel.Channel``).
FRAME_HEADER = struct.Struct("!LB")
#: What ends a frame, after its data.
FLUSHER = b"\n"

#: The questions an agent answers without RPyC, by the service's method name:
#: a frame holding exactly these bytes, as the connection's first.
PLAIN_QUESTIONS = {"info": b"flask-utd:info", "stats": b"flask-utd:stats"}

_I1 = struct.Struct("!B")
_I4 = struct.Struct("!L")
_F8 = struct.Struct("!d")
#: The largest reply accepted (a report of thousands of deep threads fits).
MAX_FRAME = 256 * 1024 * 1024
#: What a read asks for before a frame's length is known (a whole dump of a
#: process usually fits), and at most.
_RECV_FIRST = 64 * 1024
_RECV_MAX = 1024 * 1024


class RemoteError(Exception):
    """The agent answered with an exception: its type name and arguments."""


class ProtocolError(Exception):
    """The peer sent something this client does not expect."""


# -- brine -----------------------------------------------------------------------


def _dump(obj: Any, out: list[bytes]) -> None:
    kind = type(obj)
    if obj is None:
        out.append(_I1.pack(TAG_NONE))
    elif kind is bool:
        out.append(_I1.pack(TAG_TRUE if obj else TAG_FALSE))
    elif kind is int:
        if IMM_INT_MIN <= obj < IMM_INT_MAX:
            out.append(_I1.pack(obj + IMM_INT_BIAS))
        else:
            digits = str(obj).encode()
            if len(digits) < 256:
                out.append(_I1.pack(TAG_INT_L1) + _I1.pack(len(digits)) + digits)
            else:
                out.append(_I1.pack(TAG_INT_L4) + _I4.pack(len(digits)) + digits)
    elif kind is str:
        out.append(_I1.pack(TAG_UNICODE))
        _dump(obj.encode("utf-8"), out)
    elif kind is bytes:
        size = len(obj)
        if size == 0:
            out.append(_I1.pack(TAG_EMPTY_STR))
        elif size <= 4:
            out.append(_I1.pack(TAG_STR1 + size - 1) + obj)
        elif size < 256:
            out.append(_I1.pack(TAG_STR_L1) + _I1.pack(size) + obj)
        else:
            out.append(_I1.pack(TAG_STR_L4) + _I4.pack(size) + obj)
    elif kind is tuple:
        size = len(obj)
        if size == 0:
            out.append(_I1.pack(TAG_EMPTY_TUPLE))
        elif size <= 4:
            out.append(_I1.pack(TAG_TUP1 + size - 1))
        elif size < 256:
            out.append(_I1.pack(TAG_TUP_L1) + _I1.pack(size))
        else:
            out.append(_I1.pack(TAG_TUP_L4) + _I4.pack(size))
        for item in obj:
            _dump(item, out)
    else:
        raise TypeError(f"cannot send a {kind.__name__}")


def dumps(obj: Any) -> bytes:
    """``obj`` in brine (``None``, ``bool``, ``int``, ``str``, ``bytes``, ``tuple``)."""
    out: list[bytes] = []
    _dump(obj, out)
    return b"".join(out)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, count: int) -> bytes:
        end = self.pos + count
        if end > len(self.data):
            raise ProtocolError("truncated message")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def load(self) -> Any:
        tag = self.take(1)[0]
        if IMM_INT_MIN <= tag - IMM_INT_BIAS < IMM_INT_MAX:
            return tag - IMM_INT_BIAS
        if tag == TAG_NONE:
            return None
        if tag == TAG_EMPTY_STR:
            return b""
        if tag == TAG_EMPTY_TUPLE:
            return ()
        if tag == TAG_TRUE:
            return True
        if tag == TAG_FALSE:
            return False
        if tag == TAG_UNICODE:
            raw = self.load()
            if type(raw) is not bytes:
                raise ProtocolError("bad string")
            return raw.decode("utf-8")
        if TAG_STR1 <= tag < TAG_STR1 + 4:
            return self.take(tag - TAG_STR1 + 1)
        if tag == TAG_STR_L1:
            return self.take(self.take(1)[0])
        if tag == TAG_STR_L4:
            return self.take(_I4.unpack(self.take(4))[0])
        if TAG_TUP1 <= tag < TAG_TUP1 + 4:
            return tuple(self.load() for _ in range(tag - TAG_TUP1 + 1))
        if tag == TAG_TUP_L1:
            return tuple(self.load() for _ in range(self.take(1)[0]))
        if tag == TAG_TUP_L4:
            return tuple(self.load() for _ in range(_I4.unpack(self.take(4))[0]))
        if tag == TAG_INT_L1:
            return int(self.take(self.take(1)[0]))
        if tag == TAG_INT_L4:
            return int(self.take(_I4.unpack(self.take(4))[0]))
        if tag == TAG_FLOAT:
            return _F8.unpack(self.take(8))[0]
        raise ProtocolError(f"unexpected brine tag {tag:#x}")


def loads(data: bytes) -> Any:
    """The object that ``data`` holds in brine (the subset :func:`dumps` writes)."""
    reader = _Reader(data)
    obj = reader.load()
    if reader.pos != len(data):
        raise ProtocolError("trailing bytes")
    return obj


# -- the calls ------------------------------------------------------------------


def frame(data: bytes) -> bytes:
    """``data`` as one uncompressed frame of the channel."""
    return FRAME_HEADER.pack(len(data), 0) + data + FLUSHER


def _request_frame(seq: int, handler: int, boxed_args: tuple[Any, ...]) -> bytes:
    return frame(_I1.pack(MSG_REQUEST) + dumps((seq, (handler, boxed_args))))


#: The first request of every call, ``HANDLE_GETROOT`` as sequence number 1.
_GETROOT = _request_frame(1, HANDLE_GETROOT, (LABEL_VALUE, ()))


def _answer(data: bytes, seq: int) -> tuple[int, Any]:
    """The boxed answer ``(label, value)`` in the reply ``data`` to request ``seq``.

    :raises RemoteError: the peer answered with an exception.
    :raises ProtocolError: anything else than a reply to ``seq``.
    """
    if not data:
        raise ProtocolError("empty message")
    msg = data[0]
    if msg not in (MSG_REPLY, MSG_EXCEPTION):
        # The agent never calls back: a request from it is not expected.
        raise ProtocolError(f"unexpected message type {msg}")
    answer = loads(data[1:])
    if type(answer) is not tuple or len(answer) != 2 or answer[0] != seq:
        raise ProtocolError("reply to another request")
    if msg == MSG_EXCEPTION:
        raise RemoteError(_exception_text(answer[1]))
    boxed = answer[1]
    if type(boxed) is not tuple or len(boxed) != 2:
        raise ProtocolError("bad reply")
    return boxed[0], boxed[1]


class Call:
    """``root.<name>(*args)`` on the agent listening on ``path``, made by
    :func:`call_all` together with others, without a thread of its own.

    After :func:`call_all`, either :attr:`error` is set (and :attr:`connected`
    says whether it came after the connection was made) or :attr:`value` holds
    the plain value the call returned.
    """

    def __init__(self, path: str, name: str, *args: Any) -> None:
        self.path = path
        self.name = name
        self.args = args
        self.value: Any = None
        self.error: BaseException | None = None
        self.connected = False
        self.done = False
        self.sock: socket.socket | None = None
        self._out = b""
        self._inbox = bytearray()
        self._seq = 0
        #: One of :data:`PLAIN_QUESTIONS`, or ``None`` to call through RPyC.
        self._plain = None if args else PLAIN_QUESTIONS.get(name)

    def _start(self) -> None:
        """Connect and send the first request (as much of it as the socket takes).

        A Unix socket connects at once or fails at once (``ECONNREFUSED``,
        ``ENOENT``; ``EAGAIN`` when the listener's queue is full).
        """
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.connect(self.path)
        self.connected = True
        self._seq = 1
        self._out = _GETROOT if self._plain is None else frame(self._plain)
        self._send()

    def _send(self) -> None:
        assert self.sock is not None
        try:
            sent = self.sock.send(self._out, socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            return
        self._out = self._out[sent:]

    def _receive(self) -> None:
        assert self.sock is not None
        try:
            chunk = self.sock.recv(self._wanted())
        except (BlockingIOError, InterruptedError):
            return
        if not chunk:
            raise EOFError("connection closed by peer")
        self._inbox += chunk
        while not self.done:
            frame = self._cut_frame()
            if frame is None:
                return
            self._on_reply(frame)

    def _wanted(self) -> int:
        """How much to ask the socket for: the rest of the frame, once its length
        is known. ``recv`` allocates all it is asked for first, and a buffer
        over 128 KiB comes from ``mmap``, which costs more than a small reply."""
        inbox = self._inbox
        if len(inbox) < FRAME_HEADER.size:
            return _RECV_FIRST
        length: int = FRAME_HEADER.unpack_from(inbox)[0]
        end = FRAME_HEADER.size + length + len(FLUSHER)
        return max(1, min(end - len(inbox), _RECV_MAX))

    def _cut_frame(self) -> bytes | None:
        inbox = self._inbox
        if len(inbox) < FRAME_HEADER.size:
            return None
        length, compressed = FRAME_HEADER.unpack_from(inbox)
        if length > MAX_FRAME:
            raise ProtocolError(f"frame of {length} bytes is too large")
        start = FRAME_HEADER.size
        end = start + length + len(FLUSHER)
        if len(inbox) < end:
            return None
        data = bytes(inbox[start : start + length])
        del inbox[:end]
        return zlib.decompress(data) if compressed else data

    def _on_reply(self, data: bytes) -> None:
        if self._plain is not None:
            try:
                self.value = data.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ProtocolError(f"{self.name} answered bytes, not text") from err
            self._end(None)
            return
        label, value = _answer(data, self._seq)
        if self._seq == 1:
            # The reference to the service, for HANDLE_CALLATTR on it.
            if label != LABEL_REMOTE_REF or type(value) is not tuple or len(value) != 3:
                raise ProtocolError("the root is not a remote object")
            self._seq = 2
            self._out = _request_frame(
                2,
                HANDLE_CALLATTR,
                (
                    LABEL_TUPLE,
                    (
                        (LABEL_LOCAL_REF, value),
                        (LABEL_VALUE, self.name),
                        (LABEL_VALUE, tuple(self.args)),
                        (LABEL_VALUE, ()),
                    ),
                ),
            )
            self._send()
            return
        if label != LABEL_VALUE:
            raise ProtocolError(f"{self.name} answered a reference, not plain data")
        self.value = value
        self._end(None)

    def _end(self, error: BaseException | None) -> None:
        self.error = error
        self.done = True
        if self.sock is not None:
            self.sock.close()


def call_all(
    calls: list[Call], deadline: float, meanwhile: Callable[[], None] | None = None
) -> None:
    """Make every call at once, from this thread; return when all have ended or
    ``deadline`` (a ``time.monotonic()`` value) has passed. ``meanwhile`` is
    called once every call has been sent its first request, while the peers
    answer.

    Each call ends with a value or an error, never raising here:

    - ``ConnectionRefusedError``: nobody listens on its path;
    - ``OSError``: the socket cannot be reached, or the connection broke;
    - ``TimeoutError``: the deadline passed;
    - ``EOFError``: the peer closed the connection without answering;
    - ``RemoteError``: the call raised in the agent;
    - ``ProtocolError``: the peer does not speak this protocol.

    One thread for all the calls rather than a thread each: starting threads and
    passing the GIL between them cost the asking process more CPU than the
    protocol itself, and every agent being asked shares the machine's CPUs with it.
    """
    # poll rather than epoll: no descriptor to make and close for a few sockets.
    selector = selectors.PollSelector()
    try:
        for call in calls:
            if time.monotonic() >= deadline:
                break
            try:
                call._start()
            except Exception as err:
                call._end(err)
                continue
            assert call.sock is not None
            selector.register(call.sock, _events(call), call)
        if meanwhile is not None:
            meanwhile()
        pending = len(selector.get_map())
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, mask in selector.select(left):
                call = key.data
                try:
                    if mask & selectors.EVENT_WRITE:
                        call._send()
                    if mask & selectors.EVENT_READ:
                        call._receive()
                except Exception as err:
                    call._end(err)
                if call.done:
                    selector.unregister(key.fileobj)
                    pending -= 1
                elif key.events != _events(call):
                    selector.modify(key.fileobj, _events(call), call)
    finally:
        selector.close()
        for call in calls:
            if not call.done:
                call._end(TimeoutError("the connection's deadline has passed"))


def _events(call: Call) -> int:
    return selectors.EVENT_WRITE if call._out else selectors.EVENT_READ


def _exception_text(raw: Any) -> str:
    """What RPyC's ``vinegar`` sent: ``((module, name), args, attrs, traceback)``."""
    try:
        (_module, name), args = raw[0], raw[1]
        return f"{name}: {', '.join(str(a) for a in args)}"
    except (TypeError, ValueError, IndexError):
        return f"remote exception {raw!r}"


def call(path: str, deadline: float, name: str, *args: Any) -> Any:
    """Connect to the agent on ``path``, call ``root.<name>(*args)``, close.

    :raises ConnectionRefusedError: nobody listens on ``path``.
    :raises OSError: the socket cannot be reached.
    :raises TimeoutError: the deadline passed.
    :raises EOFError: the peer closed the connection without answering.
    :raises RemoteError: the call raised in the agent.
    :raises ProtocolError: the peer does not speak this protocol.
    """
    one = Call(path, name, *args)
    call_all([one], deadline)
    if one.error is not None:
        raise one.error
    return one.value
