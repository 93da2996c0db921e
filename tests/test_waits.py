"""The wait state of real threads, read the way the agent reads it."""

from __future__ import annotations

import dis
import functools
import json
import os
import queue
import select
import selectors
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo_app.server import ROOT
from flask_utd.agent.snapshot import process_report
from flask_utd.agent.waits import STATES
from flask_utd.agent.waits import Callee
from flask_utd.agent.waits import callee
from flask_utd.agent.waits import infer
from flask_utd.core.report import Frame
from flask_utd.core.report import Thread
from tests.helpers import SUPPORTED
from tests.helpers import need_uwsgi
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


class GuardedAccount(Account):
    """An account whose ``__dict__`` is a property: finding its lock must not
    run it."""

    asked: list[str] = []

    @property
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]
        GuardedAccount.asked.append("__dict__")
        return {}


def test_finding_the_lock_runs_no_code_of_the_app(park: Park) -> None:
    account = GuardedAccount()
    holding = threading.Event()
    done = threading.Event()

    def holder() -> None:
        with account._lock:
            holding.set()
            done.wait(30)

    park(holder, done.set)
    assert holding.wait(10)
    GuardedAccount.asked.clear()
    me = park(account.update, lambda: None).settled("waiting-lock")
    assert me["lock_owner"] is None and GuardedAccount.asked == []


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
    # The C method, by the type of the object it is called on.
    assert me["call"] == "socket.socket.recv"


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


def test_a_c_call_has_the_os_state_named_or_not(park: Park) -> None:
    """Where the frames cannot name the wait, /proc says where the thread is;
    the call is named when the frame says what it calls."""
    r, w = os.pipe()
    r2, w2 = os.pipe()
    readers = [os.read]

    def reader() -> None:
        os.read(r, 1)
        os.close(r)

    def unnamed() -> None:
        readers[0](r2, 1)
        os.close(r2)

    def release(fd: int) -> Callable[[], None]:
        def write() -> None:
            os.write(fd, b"x")
            os.close(fd)

        return write

    me = park(reader, release(w)).settled("in-call", "S")
    assert _inferred_in(me, "reader")["code"] == "os.read(r, 1)"
    assert me["call"] == "os.read"  # as the code calls it (not posix.read)
    assert me["wchan"] is None or isinstance(me["wchan"], str)
    other = park(unnamed, release(w2)).settled("unknown", "S")
    assert _inferred_in(other, "unnamed")["code"] == "readers[0](r2, 1)"
    assert other["call"] is None


@pytest.fixture
def locked_database(tmp_path: Path) -> Iterator[tuple[str, sqlite3.Connection]]:
    """A database that another connection holds locked (``BEGIN EXCLUSIVE``),
    as a long write does: every other connection's statement waits for the
    lock, up to its busy timeout, inside sqlite's C code."""
    path = str(tmp_path / "app.sqlite")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE post (id INTEGER PRIMARY KEY, title TEXT)")
    holder.execute("BEGIN EXCLUSIVE")
    yield path, holder
    holder.close()


def test_a_locked_sqlite_database_is_an_in_call_wait_named_by_the_callable(
    locked_database: tuple[str, sqlite3.Connection], park: Park
) -> None:
    """As in Flask's tutorial app (flaskr): ``db.execute(...)`` on a
    ``sqlite3.Connection``, and a cursor's ``execute``, wait for the lock."""
    path, holder = locked_database
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            holder.execute("ROLLBACK")

    def create() -> None:
        db = sqlite3.connect(path, timeout=30)
        db.execute("INSERT INTO post (title) VALUES (?)", ("hello",))
        db.close()

    def index() -> None:
        db = sqlite3.connect(path, timeout=30)
        cursor = db.cursor()
        cursor.execute("SELECT id, title FROM post")
        db.close()

    writer = park(create, release).settled("in-call")
    reader = park(index, release).settled("in-call")
    frame = _inferred_in(writer, "create")
    assert frame["code"] == (
        'db.execute("INSERT INTO post (title) VALUES (?)", ("hello",))'
    )
    assert writer["call"] == "sqlite3.Connection.execute"
    assert _inferred_in(reader, "index")["code"] == (
        'cursor.execute("SELECT id, title FROM post")'
    )
    assert reader["call"] == "sqlite3.Cursor.execute"
    # sqlite's busy handler sleeps between its tries: the OS says so.
    assert writer["os_state"] in ("S", "R")


class Lazy:
    """An object whose attribute is a property, as an ORM's often are."""

    def __init__(self, path: str) -> None:
        self.reads = 0
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False)

    @property
    def db(self) -> sqlite3.Connection:
        self.reads += 1
        return self._db


def test_naming_the_call_runs_no_code_of_the_app(
    locked_database: tuple[str, sqlite3.Connection], park: Park
) -> None:
    path, holder = locked_database
    lazy = Lazy(path)
    holder_released = threading.Event()

    def write() -> None:
        lazy.db.execute("INSERT INTO post (title) VALUES ('x')")

    def release() -> None:
        if not holder_released.is_set():
            holder_released.set()
            holder.execute("ROLLBACK")

    before = lazy.reads
    parked = park(write, release)
    wait_for(lambda: lazy.reads == before + 1, timeout=10)
    me = parked.settled("unknown")
    # The property is not called to find what is called: the call stays unnamed.
    assert me["call"] is None and lazy.reads == before + 1
    assert (_inferred_in(me, "write")["code"] or "").startswith("lazy.db.execute(")


class Disguised:
    """An object that runs code when asked what it is (``__class__``), or for its
    ``__dict__``: naming a call through it must do neither."""

    asked: list[str] = []

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        Disguised.asked.append("__class__")
        return Disguised


class NoDict:
    """Its attributes live where Python keeps them, but asking for its
    ``__dict__`` runs code."""

    asked: list[str] = []

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    @property
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]
        NoDict.asked.append("__dict__")
        return {}


def test_naming_the_call_asks_no_object_what_it_is(
    locked_database: tuple[str, sqlite3.Connection], park: Park
) -> None:
    path, holder = locked_database
    released = threading.Event()
    # Autocommit: each insert holds the database only while it runs.
    connect = functools.partial(
        sqlite3.connect, path, timeout=30, check_same_thread=False
    )
    disguised = Disguised(connect(isolation_level=None))
    no_dict = NoDict(connect(isolation_level=None))

    def release() -> None:
        if not released.is_set():
            released.set()
            holder.execute("ROLLBACK")

    def through_disguised() -> None:
        disguised.db.execute("INSERT INTO post (title) VALUES ('d')")

    def through_no_dict() -> None:
        no_dict.db.execute("INSERT INTO post (title) VALUES ('n')")

    Disguised.asked.clear()
    first = park(through_disguised, release).settled("in-call")
    assert first["call"] == "sqlite3.Connection.execute"
    assert Disguised.asked == []
    NoDict.asked.clear()
    # Such an object's attributes are not read: the call stays unnamed.
    me = park(through_no_dict, release).settled("unknown")
    assert _inferred_in(me, "through_no_dict")["code"] == (
        "no_dict.db.execute(\"INSERT INTO post (title) VALUES ('n')\")"
    )
    assert me["call"] is None and NoDict.asked == []


def _calls_in(function: Callable[..., object]) -> list[Callee | None]:
    """What :func:`callee` reads at each call instruction of ``function``."""
    code = function.__code__
    return [
        callee(code, ins.offset)
        for ins in dis.get_instructions(code)
        if ins.opname in ("CALL", "CALL_KW", "CALL_FUNCTION", "CALL_METHOD")
        or ins.opname in ("CALL_FUNCTION_KW", "CALL_FUNCTION_EX")
    ]


def test_the_callable_is_read_from_the_bytecode() -> None:
    db: Any = None
    handlers: Any = None
    x: Any = None

    def plain() -> None:
        db.execute("SELECT ?", (x, 1))

    def attributes_and_keywords() -> None:
        os.path.join("a", *x)
        json.dumps(x, indent=2)

    def spread() -> None:
        print(*x)

    def chained() -> None:
        db.execute("SELECT 1").fetchall()

    def returned() -> None:
        handlers(x)(x)

    def subscripted() -> None:
        handlers[0](x)

    def with_a_jump_in_the_arguments() -> None:
        db.execute(x if x else None)

    assert _calls_in(plain) == [("local", ("db", "execute"))]
    assert _calls_in(attributes_and_keywords) == [
        ("global", ("os", "path", "join")),
        ("global", ("json", "dumps")),
    ]
    assert _calls_in(spread) == [("global", ("print",))]
    # The first call names its callable; the second calls what it returned.
    assert _calls_in(chained) == [("local", ("db", "execute")), None]
    assert _calls_in(returned) == [("local", ("handlers",)), None]
    assert _calls_in(subscripted) == [None]
    assert _calls_in(with_a_jump_in_the_arguments) == [None]


@pytest.mark.parametrize("version", SUPPORTED)
def test_calls_are_named_on_every_supported_python(version: str) -> None:
    """Each Python compiles calls into other instructions (``CALL_METHOD``;
    ``PRECALL`` and ``CALL``; ``LOAD_ATTR`` with a method bit; ``CALL_KW``)."""
    python = Path(need_uwsgi(version)).parent / "python"
    out = subprocess.run(
        [str(python), "-m", "tests.apps.calls"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "create": ["in-call", "sqlite3.Connection.execute"],
        "index": ["in-call", "sqlite3.Cursor.execute"],
        "receive": ["io-socket", "socket.socket.recv"],
        "read": ["in-call", "os.read"],
        "sleep": ["sleeping", "time.sleep"],
    }


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
