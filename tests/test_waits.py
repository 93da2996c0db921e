"""The wait state of real threads, read the way the agent reads it."""

from __future__ import annotations

import os
import queue
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator

import pytest

from flask_utd.agent.snapshot import process_report
from flask_utd.agent.waits import STATES
from flask_utd.agent.waits import infer
from flask_utd.core.report import Frame
from flask_utd.core.report import Thread
from tests.helpers import wait_for


class Parked:
    """A thread parked in some call, and how to let it go."""

    def __init__(
        self, target: Callable[[], object], release: Callable[[], None]
    ) -> None:
        self.release = release
        self.thread = threading.Thread(target=target, name=f"parked-{target.__name__}")
        self.thread.start()

    def report(self) -> Thread:
        report = process_report(
            role="process",
            worker_id=None,
        )
        return next(t for t in report["threads"] if t["ident"] == self.thread.ident)

    def settled(self, state: str, os_state: str | None = None) -> Thread:
        """The thread's report once its state is ``state`` (and the OS's state
        ``os_state``, if given), with a deadline."""
        seen: list[tuple[str | None, str | None]] = []

        def check() -> Thread | None:
            me = self.report()
            seen.append((me["wait"], me["os_state"]))
            if me["wait"] != state or os_state not in (None, me["os_state"]):
                return None
            return me

        try:
            found: Thread = wait_for(check, timeout=10)
        except AssertionError as err:
            raise AssertionError(
                f"never {state} ({os_state}); seen {sorted(set(seen))}"
            ) from err
        return found

    def stop(self) -> None:
        self.release()
        self.thread.join(10)
        assert not self.thread.is_alive()


#: The ``park`` fixture: park a thread in ``target`` until ``release``.
Park = Callable[[Callable[[], object], Callable[[], None]], Parked]


@pytest.fixture
def park() -> Iterator[Park]:
    made: list[Parked] = []

    def start(target: Callable[[], object], release: Callable[[], None]) -> Parked:
        made.append(Parked(target, release))
        return made[-1]

    yield start
    for p in made:
        p.stop()


def _wait_frame(me: Thread) -> Frame:
    """The frame ``wait_frame`` points at, which every parked thread has."""
    index = me["wait_frame"]
    assert index is not None, me
    return me["frames"][index]


def _inferred_in(me: Thread, function: str) -> Frame:
    frame = _wait_frame(me)
    assert frame["function"] == function, me["frames"]
    return frame


def test_time_sleep(park: Park) -> None:
    stop = threading.Event()

    def sleeper() -> None:
        while not stop.is_set():
            time.sleep(0.5)

    me = park(sleeper, stop.set).settled("sleeping")
    frame = _inferred_in(me, "sleeper")
    assert frame["code"] == "time.sleep(0.5)"
    # The frames name the wait; /proc is not read for it (it would only say S).
    assert (me["os_state"], me["wchan"]) == (None, None)
    assert me["lock_owner"] is None


def test_lock_acquire(park: Park) -> None:
    lock = threading.Lock()
    lock.acquire()

    def taker() -> None:
        lock.acquire()
        lock.release()

    me = park(taker, lock.release).settled("waiting-lock")
    assert _inferred_in(me, "taker")["code"] == "lock.acquire()"
    assert me["lock_owner"] is None  # a plain Lock keeps no owner


class Account:
    def __init__(self) -> None:
        self._lock = threading.RLock()

    def update(self) -> None:
        with self._lock:
            pass


def test_rlock_owner_is_the_holding_thread(park: Park) -> None:
    account = Account()
    holding = threading.Event()
    done = threading.Event()

    def holder() -> None:
        with account._lock:
            holding.set()
            done.wait(30)

    h = park(holder, done.set)
    assert holding.wait(10)
    me = park(account.update, lambda: None).settled("waiting-lock")
    frame = _inferred_in(me, "update")
    assert frame["code"] == "with self._lock:"
    assert me["lock_owner"] == h.thread.ident
    # And the holder is seen waiting on its Event, as waiting-condition.
    assert h.settled("waiting-condition")["lock_owner"] is None


def test_condition_wait(park: Park) -> None:
    cond = threading.Condition()
    flag: list[bool] = []

    def waiter() -> None:
        with cond:
            while not flag:
                cond.wait()

    def release() -> None:
        with cond:
            flag.append(True)
            cond.notify_all()

    me = park(waiter, release).settled("waiting-condition")
    assert _wait_frame(me)["file"].endswith("threading.py")
    assert any(f["function"] == "waiter" for f in me["frames"])


def test_event_wait(park: Park) -> None:
    event = threading.Event()

    def waiter() -> None:
        event.wait()

    me = park(waiter, event.set).settled("waiting-condition")
    assert [f["function"] for f in me["frames"]][-3:] == ["waiter", "wait", "wait"]


def test_queue_get(park: Park) -> None:
    q: queue.Queue[int] = queue.Queue()

    def consumer() -> None:
        q.get()

    me = park(consumer, lambda: q.put(1)).settled("waiting-condition")
    assert "queue.py" in [f["file"].rsplit("/", 1)[-1] for f in me["frames"]]


def test_semaphore_is_a_lock_and_join_a_condition(park: Park) -> None:
    sem = threading.Semaphore(0)

    def taker() -> None:
        sem.acquire()

    me = park(taker, sem.release).settled("waiting-lock")
    assert _wait_frame(me)["function"] == "acquire"

    other = threading.Event()
    sleeper = threading.Thread(target=other.wait, args=(30,))
    sleeper.start()

    def joiner() -> None:
        sleeper.join()

    park(joiner, other.set).settled("waiting-condition")


def test_the_same_innermost_frame_under_other_callers_in_one_dump(park: Park) -> None:
    """A dump infers the state once per distinct end of stack: two threads in the
    same ``Condition.wait`` instruction, one under ``Semaphore.acquire`` and one
    under ``Event.wait``, still get their own states, in the same dump."""
    sem = threading.Semaphore(0)
    event = threading.Event()
    taker = park(sem.acquire, sem.release)
    waiter = park(event.wait, event.set)

    def both() -> tuple[Thread, Thread] | None:
        report = process_report(
            role="process",
            worker_id=None,
        )
        mine = {t["ident"]: t for t in report["threads"]}
        assert taker.thread.ident is not None and waiter.thread.ident is not None
        a, b = mine[taker.thread.ident], mine[waiter.thread.ident]
        if a["frames"][-1] != b["frames"][-1] or b["wait"] != "waiting-condition":
            return None
        return a, b

    a, b = wait_for(both, timeout=10)
    assert a["wait"] == "waiting-lock"
    assert _wait_frame(a)["function"] == "acquire"
    assert _wait_frame(b)["function"] == "wait"


def _send_and_close(sock: socket.socket) -> Callable[[], None]:
    def release() -> None:
        sock.send(b"x")
        sock.close()

    return release


def test_socket_recv(park: Park) -> None:
    a, b = socket.socketpair()

    def reader() -> None:
        a.recv(1)
        a.close()

    me = park(reader, _send_and_close(b)).settled("io-socket")
    assert _inferred_in(me, "reader")["code"] == "a.recv(1)"


def test_socket_accept_in_the_standard_library(park: Park) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def acceptor() -> None:
        conn, _ = server.accept()
        conn.close()
        server.close()

    def release() -> None:
        socket.create_connection(("127.0.0.1", port)).close()

    me = park(acceptor, release).settled("io-socket")
    assert _wait_frame(me)["file"].endswith("socket.py")


def test_select_and_selectors(park: Park) -> None:
    a, b = socket.socketpair()

    def selecting() -> None:
        select.select([a], [], [])
        a.close()

    me = park(selecting, _send_and_close(b)).settled("io-select")
    assert _inferred_in(me, "selecting")["code"] == "select.select([a], [], [])"

    c, d = socket.socketpair()
    sel = selectors.DefaultSelector()
    sel.register(c, selectors.EVENT_READ)

    def with_selector() -> None:
        sel.select()
        sel.close()
        c.close()

    me = park(with_selector, _send_and_close(d)).settled("io-select")
    assert _wait_frame(me)["file"].endswith("selectors.py")


def test_an_unnamed_c_call_has_the_os_state(park: Park) -> None:
    """Where the frames cannot name the wait, /proc says where the thread is."""
    r, w = os.pipe()

    def reader() -> None:
        os.read(r, 1)
        os.close(r)

    def release() -> None:
        os.write(w, b"x")
        os.close(w)

    me = park(reader, release).settled("unknown", "S")
    assert _inferred_in(me, "reader")["code"] == "os.read(r, 1)"
    assert me["wchan"] is None or isinstance(me["wchan"], str)


def test_busy_loop_is_running(park: Park) -> None:
    stopped: list[bool] = []

    def spin() -> None:
        n = 0
        while not stopped:
            n += 1

    me = park(spin, lambda: stopped.append(True)).settled("running")
    assert _wait_frame(me)["function"] == "spin"
    # Running, or waiting for the GIL that the dump holds.
    assert me["os_state"] in ("R", "S")


def test_every_thread_has_a_known_state() -> None:
    report = process_report(
        role="process",
        worker_id=None,
    )
    for thread in report["threads"]:
        assert thread["wait"] in STATES
        assert thread["wait_frame"] is None or 0 <= thread["wait_frame"] < len(
            thread["frames"]
        )


def _frame(file: str, function: str, code: str) -> Frame:
    return {"file": file, "line": 1, "function": function, "code": code}


@pytest.mark.parametrize(
    ("code", "calling", "os_state", "expected"),
    [
        ("time.sleep(5)", True, "S", "sleeping"),
        ("sleep(HELLO_SECONDS)", True, "S", "sleeping"),
        ("with self._lock:", True, "S", "waiting-lock"),
        ("conn.recv_into(buf)", True, "S", "io-socket"),
        ("x = work_queue.get(block=True)", True, "S", "waiting-condition"),
        ("os.read(fd, 10)", True, "S", "unknown"),  # a C call we cannot name
        ("zlib.compress(data)", True, "R", "running"),  # in C, on the CPU
        ("time.sleep(5)", False, "S", "running"),  # between bytecodes: Python code
    ],
)
def test_infer_from_the_line(
    code: str, calling: bool, os_state: str, expected: str
) -> None:
    frames = [_frame("/app/views.py", "view", code)]
    assert infer(frames, calling=calling, os_state=os_state)[0] == expected


def test_the_thread_taking_the_dump_is_running() -> None:
    report = process_report(
        role="process",
        worker_id=None,
    )
    (me,) = [t for t in report["threads"] if t["ident"] == threading.get_ident()]
    assert (me["os_state"], me["wchan"]) == ("R", None)
