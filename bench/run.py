"""``make bench``: flask-utd against py-spy and against no extension.

Every figure is a ratio against a peer measured in the same run, alternating
with it, so that a busy machine slows both sides alike. ``BENCH_SMOKE=1`` runs
tiny sizes once: it checks that the benchmark runs and prints its table (the
test suite does this), not the targets.

See docs/performance.md for the method and the latest figures.
"""

from __future__ import annotations

import compileall
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import venv
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import NamedTuple

from demo_app.server import ROOT
from demo_app.server import GunicornServer
from demo_app.server import UwsgiServer
from demo_app.server import uwsgi_binary

SMOKE = os.environ.get("BENCH_SMOKE") == "1"
#: The key that signs dump URLs (``UTD_SECRET_KEY``) in every app of the run.
SECRET = os.environ.setdefault("BENCH_UTD_SECRET_KEY", f"bench-{secrets.token_hex()}")
#: Workers per server for (a) and (b).
WORKER_COUNTS = (2,) if SMOKE else (1, 4, 16)
#: Alternating runs of each command line in (a).
RUNS = 1 if SMOKE else 7
#: In-process repetitions for (b), and for (c), whose runs take a few ms each.
REPS = 1 if SMOKE else 15
SNAPSHOT_REPS = 1 if SMOKE else 41
THREAD_COUNTS = (10,) if SMOKE else (100, 1000)
#: (c) for greenlets: how many, each serving a request.
GREENLET_COUNT = 50 if SMOKE else 1000
DEPTH = 5 if SMOKE else 20
#: (d): alternating bursts per server, seconds per burst, load-generator processes.
BURSTS = 1 if SMOKE else 10
BURST_SECONDS = 0.5 if SMOKE else 1.5
#: (d): requests per side and round of the in-process WSGI comparison.
WSGI_CALLS = 20 if SMOKE else 200
#: Rounds of WSGI_CALLS on each side, alternating: many short rounds, so that
#: the two sides see the same moments of a noisy machine.
WSGI_ROUNDS = 2 if SMOKE else 100
CLIENTS = 2
#: (e): how long the agent is watched while idle.
IDLE_SECONDS = 2.0 if SMOKE else 60.0
#: (b): requests of each kind whose CPU time, in the whole server, is added up.
CPU_REQUESTS = 2 if SMOKE else 60
#: Alternating rounds of CPU_REQUESTS scrapes and dumps (b).
CPU_ROUNDS = 1 if SMOKE else 5
#: (e): the watchdog's threshold (UTD_WATCHDOG) in the servers of (d) and (e),
#: and how long the in-process measure of its wake-ups sends requests.
WATCHDOG_SECONDS = 1.0
WATCHDOG_LOAD_SECONDS = 3.0 if SMOKE else 20.0

#: uWSGI settings shared by every server of the benchmark.
UWSGI_OPTIONS = [
    "--module",
    "bench.app:app",
    "--master",
    "--py-call-uwsgi-fork-hooks",
    "--die-on-term",
    "--need-app",
    "--disable-logging",
]
#: x86_64 and aarch64 numbers of accept4(2), to say where the agent blocks.
ACCEPT4 = {"x86_64": 288, "aarch64": 242}


@dataclass
class Row:
    """One line of the table."""

    section: str
    what: str
    ours: str
    peer: str = ""
    ratio: float | None = None
    target: str = ""
    verdict: str = ""


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {row.section} {row.what}: {row.ours} | {row.peer}", file=sys.stderr)

    def render(self) -> str:
        head = ("", "measure", "flask-utd", "peer", "ratio", "target", "result")
        lines = [
            (
                r.section,
                r.what,
                r.ours,
                r.peer,
                "" if r.ratio is None else f"{r.ratio:.2f}x",
                r.target,
                r.verdict,
            )
            for r in self.rows
        ]
        widths = [
            max(len(str(c)) for c in col) for col in zip(head, *lines, strict=True)
        ]
        sep = "+".join("-" * (w + 2) for w in widths)
        out = [
            " | ".join(str(c).ljust(w) for c, w in zip(head, widths, strict=True)),
            sep,
        ]
        out += [
            " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
            for line in lines
        ]
        return "\n".join(out) + "\n"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def verdict(ratio: float | None, limit: float, *, at_least: bool = False) -> str:
    if ratio is None:
        return "not measured"
    if at_least:
        return "met" if ratio >= limit else f"MISSED by {limit - ratio:.2f}x"
    return "met" if ratio <= limit else f"MISSED by {ratio - limit:.2f}x"


def throughput_verdict(ratio: float, pairs: list[float]) -> str:
    """The verdict of (d), unless the machine is too noisy to tell 2 %."""
    if len(pairs) > 1 and max(pairs) - min(pairs) > 0.1:
        return "NOISY: pairs spread > 0.1x, rerun on a quiet machine"
    return verdict(ratio, 0.98, at_least=True)


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPU(s), {model}, Python {platform.python_version()},"
        f" {platform.system()} {platform.release()}, load average"
        f" {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


# -- servers ----------------------------------------------------------------------


@contextmanager
def uwsgi_server(
    workers: int,
    socket_dir: str,
    *,
    site: str | None = None,
    utd: bool = True,
    stuck: bool = True,
    env_extra: dict[str, str] | None = None,
) -> Iterator[UwsgiServer]:
    """A real uWSGI: a master and ``workers`` workers, one request stuck in a
    worker; flask_utd imported from ``site`` (a :func:`plain_install`), if given."""
    binary = uwsgi_binary()
    if binary is None:
        raise SystemExit("uWSGI is not installed in this venv: run `make venv`.")
    log = Path(socket_dir).parent / f"uwsgi-{os.path.basename(socket_dir)}.log"
    env = {
        "BENCH_UTD_SOCKET_DIR": socket_dir,
        "BENCH_UTD": "1" if utd else "0",
        "PYTHONPATH": os.pathsep.join([*([site] if site else []), str(ROOT)]),
        **(env_extra or {}),
    }
    options = [*UWSGI_OPTIONS, "--workers", str(workers)]
    if site:
        # uWSGI puts its working directory first on sys.path: out of the source
        # tree, so that the installed flask_utd is the one imported.
        options += ["--chdir", site]
    server = UwsgiServer(binary, options, Path(log), env)
    server.start()
    held: list[socket.socket] = []
    try:
        if utd:
            instance = os.path.join(socket_dir, str(server.pid))
            wait_for(
                lambda: _count_sockets(instance) == workers + 1, "every agent listens"
            )
        else:
            wait_for(
                lambda: len(worker_pids(server.pid)) == workers, "every worker runs"
            )
        if stuck:
            assert server.port is not None
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"GET /stuck HTTP/1.0\r\nHost: bench\r\n\r\n")
            held.append(sock)
            if utd:
                wait_for(
                    lambda: _stuck_seen(socket_dir, server.pid), "the stuck request"
                )
        yield server
    finally:
        for sock in held:
            sock.close()
        server.stop()


def _count_sockets(directory: str) -> int:
    try:
        return sum(name.endswith(".sock") for name in os.listdir(directory))
    except FileNotFoundError:
        return 0


def _stuck_seen(socket_dir: str, master: int) -> bool:
    from flask_utd.core.collector import collect

    report = collect(socket_dir, str(master))
    return any(
        frame["function"] == "stuck"
        for p in report["processes"]
        for t in p["threads"]
        for frame in t["frames"]
    )


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark set-up: {what} not within {timeout} s")
        time.sleep(0.05)


def worker_pids(master: int) -> list[int]:
    """The children of ``master`` (uWSGI's workers), from /proc."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == master:
            pids.append(int(name))
    return sorted(pids)


# -- (a) whole-process wall time of a dump ---------------------------------------


class Install(NamedTuple):
    """flask_utd installed in a scratch venv: its Python, and its site-packages."""

    python: str
    site: str


def plain_install(tmp: str) -> Install:
    """A scratch venv with flask_utd copied in and compiled, as ``pip install``
    would leave it: without the editable-install hook that the development venv
    runs at every Python start-up, and with its ``.pyc`` files (the development
    tree may have none, with ``PYTHONDONTWRITEBYTECODE``; compiling at import
    costs time, and leaves garbage in every worker's heap). The lean command
    needs nothing but the standard library; the servers find the same copy
    first on their ``PYTHONPATH``."""
    target = os.path.join(tmp, "plain-venv")
    venv.EnvBuilder(with_pip=False, symlinks=True).create(target)
    python = os.path.join(target, "bin", "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    shutil.copytree(
        ROOT / "flask_utd",
        os.path.join(site, "flask_utd"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    compileall.compile_dir(os.path.join(site, "flask_utd"), quiet=1)
    return Install(python, site)


def py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.exists():
        return str(candidate)
    return shutil.which("py-spy")


def run_timed(
    argv: list[str], env: dict[str, str] | None = None, cwd: str | Path = ROOT
) -> tuple[float, int, str]:
    started = time.perf_counter()
    proc = subprocess.run(
        argv,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env=dict(os.environ, **(env or {})),
        timeout=60,
    )
    elapsed = time.perf_counter() - started
    return (
        elapsed,
        proc.returncode,
        (proc.stdout + proc.stderr).decode(errors="replace"),
    )


def bench_dumps(table: Table, tmp: str, install: Install) -> None:
    spy = py_spy()
    spy_note = "py-spy not installed (make bench installs it)" if spy is None else ""
    for workers in WORKER_COUNTS:
        socket_dir = tempfile.mkdtemp(prefix="b", dir=tmp)
        with uwsgi_server(workers, socket_dir, site=install.site) as server:
            commands: dict[str, tuple[list[str], dict[str, str]]] = {
                "lean": (
                    [
                        install.python,
                        "-m",
                        "flask_utd",
                        "dump",
                        "--socket-dir",
                        socket_dir,
                    ],
                    {},
                ),
                "lean-dev": (
                    [
                        sys.executable,
                        "-m",
                        "flask_utd",
                        "dump",
                        "--socket-dir",
                        socket_dir,
                    ],
                    {},
                ),
                "flask": (
                    [
                        sys.executable,
                        "-m",
                        "flask",
                        "--app",
                        "bench.app",
                        "utd",
                        "dump",
                    ],
                    {"BENCH_UTD_SOCKET_DIR": socket_dir, "PYTHONPATH": str(ROOT)},
                ),
                "python": ([install.python, "-c", "pass"], {}),
                "app": (
                    [sys.executable, "-c", "import bench.app"],
                    {"BENCH_UTD_SOCKET_DIR": socket_dir, "PYTHONPATH": str(ROOT)},
                ),
            }
            if spy is not None and not spy_note:
                commands["py-spy"] = (
                    [spy, "dump", "--pid", str(server.pid), "--subprocesses"],
                    {},
                )
            # The installed Python runs outside the source tree: ``python -m``
            # puts its working directory first on ``sys.path``, where the
            # source tree's flask_utd (without .pyc files here) would shadow
            # the installed one.
            cwds = {
                name: tmp if name in ("lean", "python") else ROOT for name in commands
            }
            times: dict[str, list[float]] = {name: [] for name in commands}
            # One untimed run each: compiles .pyc files, and checks every command works.
            for name, (argv, env) in list(commands.items()):
                _, code, output = run_timed(argv, env, cwds[name])
                if code != 0:
                    if name == "py-spy":
                        spy_note = (
                            f"py-spy failed here (exit {code}): {output.strip()[:200]}"
                        )
                        del commands[name], times[name]
                        continue
                    raise RuntimeError(f"{name} dump failed (exit {code}):\n{output}")
                if name not in ("python", "app") and "stuck" not in output:
                    raise RuntimeError(f"{name} dump does not show the stuck request")
            for _ in range(RUNS):
                for name, (argv, env) in commands.items():
                    times[name].append(run_timed(argv, env, cwds[name])[0])
            med = {name: statistics.median(values) for name, values in times.items()}
            spy_med = med.get("py-spy")
            label = f"master + {workers} worker(s)"
            for name, title in (
                ("lean", "python -m flask_utd dump"),
                ("lean-dev", "the same, editable dev venv"),
                ("flask", "flask utd dump"),
                ("python", "python -c pass (start-up floor)"),
                ("app", "import bench.app (flask utd dump's floor)"),
            ):
                ratio = med[name] / spy_med if spy_med else None
                target, result = "", ""
                if name == "lean" and workers == 16:
                    target, result = "<= 0.5x py-spy", verdict(ratio, 0.5)
                table.add(
                    Row(
                        "a",
                        f"{label}: {title}",
                        ms(med[name]),
                        f"py-spy {ms(spy_med)}" if spy_med else spy_note or "n/a",
                        ratio,
                        target,
                        result,
                    )
                )
            bench_round_trips(table, socket_dir, server, workers)
    if spy_note:
        table.add(Row("a", "py-spy", spy_note))


# -- (b) collecting the whole instance against one agent round trip -------------


def bench_round_trips(
    table: Table, socket_dir: str, server: UwsgiServer, workers: int
) -> None:
    from flask_utd.core.collector import ask
    from flask_utd.core.collector import collect

    instance = str(server.pid)
    one = next(
        os.path.join(socket_dir, instance, name)
        for name in sorted(os.listdir(os.path.join(socket_dir, instance)))
        if name.endswith(".sock") and name != f"{instance}.sock"
    )
    one_pid = int(os.path.basename(one).split(".")[0])
    whole: list[float] = []
    single: list[float] = []
    for _ in range(REPS):
        started = time.perf_counter()
        report = collect(socket_dir, instance)
        whole.append(time.perf_counter() - started)
        assert len(report["processes"]) == workers + 1
        started = time.perf_counter()
        answer = ask(one, one_pid, time.monotonic() + 2.0, 2.0, "{}")
        single.append(time.perf_counter() - started)
        assert answer["status"] == "ok", answer
    w, s = statistics.median(whole), statistics.median(single)
    # Each agent needs about one round trip of CPU: with more processes than
    # CPUs, the asks cannot all run at once, whatever the collector does.
    floor = max(1.0, (workers + 1) / (os.cpu_count() or 1))
    label = f"master + {workers} worker(s)"
    table.add(
        Row(
            "b",
            f"{label}: collector.collect (in process)",
            ms(w),
            f"one agent round trip {ms(s)}; CPU floor ~{floor:.1f}x",
            w / s,
            "<= 3x" if workers == 16 else "",
            verdict(w / s, 3.0) if workers == 16 else "",
        )
    )
    # With one worker, that worker is the stuck one: nothing serves the endpoint
    # (the optional admin listener in the master would).
    endpoint = measure_endpoint(server, socket_dir) if workers > 1 else None
    table.add(
        Row(
            "b",
            f"{label}: GET /_utd/dump (endpoint)",
            ms(endpoint)
            if endpoint is not None
            else "n/a: no endpoint, or no free worker to serve it",
            f"one agent round trip {ms(s)}",
            endpoint / s if endpoint is not None else None,
            "<= 3x" if workers == 16 else "",
            verdict(endpoint / s, 3.0)
            if endpoint is not None and workers == 16
            else "",
        )
    )
    bench_scrape(table, socket_dir, server, workers)


def bench_scrape(
    table: Table, socket_dir: str, server: UwsgiServer, workers: int
) -> None:
    """(b) what a Prometheus scrape (``GET /_utd/metrics``, the agents' ``stats``)
    costs against a full dump: in the benchmark's process, alternating, and in
    the whole server (its CPU time per request, over :data:`CPU_REQUESTS`
    requests of each, served by a free worker)."""
    try:
        from flask_utd.core.collector import collect
        from flask_utd.core.collector import collect_stats
    except ImportError:
        return  # a version without metrics
    instance = str(server.pid)
    scrape: list[float] = []
    whole: list[float] = []
    for _ in range(REPS):
        started = time.perf_counter()
        stats = collect_stats(socket_dir, instance)
        scrape.append(time.perf_counter() - started)
        assert [p["status"] for p in stats["processes"]] == ["ok"] * (workers + 1)
        started = time.perf_counter()
        collect(socket_dir, instance)
        whole.append(time.perf_counter() - started)
    sc, wh = statistics.median(scrape), statistics.median(whole)
    label = f"master + {workers} worker(s)"
    table.add(
        Row(
            "b",
            f"{label}: collector.collect_stats (metrics, in process)",
            ms(sc),
            f"collector.collect {ms(wh)}",
            sc / wh,
        )
    )
    if workers == WORKER_COUNTS[-1]:
        bench_answers(table)
    if workers < 2:
        return  # the one worker is stuck: nothing serves the app's port
    paths = ("/_utd/metrics", "/_utd/dump")
    # Untimed first: each worker imports what a scrape or a dump needs at its
    # first one (prometheus_client, the collector, the renderings).
    if any(signed_gets(server, path, 2 * workers) is None for path in paths):
        return  # a version without metrics
    # Alternating rounds, so that the machine's load falls on both alike.
    rounds: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(CPU_ROUNDS):
        for path in paths:
            rounds[path].append(server_cpu_per_request(server, path))
    cpu = {path: statistics.median(rounds[path]) for path in paths}
    ratio = cpu["/_utd/metrics"] / cpu["/_utd/dump"] if cpu["/_utd/dump"] else None
    table.add(
        Row(
            "b",
            f"{label}: GET /_utd/metrics, server CPU per scrape",
            ms(cpu["/_utd/metrics"]),
            f"GET /_utd/dump {ms(cpu['/_utd/dump'])}",
            ratio,
            "<= 0.25x" if workers == 16 else "",
            verdict(ratio, 0.25) if workers == 16 else "",
        )
    )


def bench_answers(table: Table) -> None:
    """(b) what the agent does for each question, without the connection: its
    service's ``stats`` and ``dump`` called in the benchmark's own process
    (a handful of threads, as in a worker)."""
    from flask_utd.agent.service import AgentInfo
    from flask_utd.agent.service import UTDService

    service = UTDService(AgentInfo("worker", 1))
    stats: list[float] = []
    dump: list[float] = []
    for _ in range(SNAPSHOT_REPS * 10):
        started = time.perf_counter()
        service.exposed_stats()
        stats.append(time.perf_counter() - started)
        started = time.perf_counter()
        service.exposed_dump("{}")
        dump.append(time.perf_counter() - started)
    st, du = statistics.median(stats), statistics.median(dump)
    table.add(
        Row(
            "b",
            "one process's answer alone, no connection: stats (info)",
            f"{st * 1e6:.0f} us",
            f"dump {du * 1e6:.0f} us",
            st / du,
        )
    )


def signed_gets(server: UwsgiServer, path: str, count: int) -> int | None:
    """Send ``count`` signed ``GET path`` to ``server``, one after another;
    ``None`` if the route does not exist."""
    from flask_utd.ext.signing import make_token

    assert server.port is not None
    request = (
        f"GET {path}?token={make_token(SECRET, 600)} HTTP/1.0\r\nHost: bench\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(1 << 20):
                answer += chunk
        status = answer.split(b"\r\n", 1)[0]
        if b" 404 " in status:
            return None
        if b" 200 " not in status:
            raise RuntimeError(f"{path} answered {answer[:200]!r}")
    return count


def server_cpu_per_request(server: UwsgiServer, path: str) -> float:
    """The CPU time of the master and every worker of ``server`` per signed
    ``GET path``, over :data:`CPU_REQUESTS` requests one after another.

    Read from each thread's ``schedstat`` (nanoseconds), not from the
    processes' clock ticks: a scrape costs a few milliseconds spread over 17
    processes, each of which would round its share to a tick (10 ms)."""
    pids = [server.pid, *worker_pids(server.pid)]
    before = sum(process_cpu_ns(pid) for pid in pids)
    signed_gets(server, path, CPU_REQUESTS)
    spent = sum(process_cpu_ns(pid) for pid in pids) - before
    return spent / 1e9 / CPU_REQUESTS


def process_cpu_ns(pid: int) -> int:
    """The time the threads of ``pid`` have run on a CPU, in nanoseconds (the
    first field of each ``/proc/<pid>/task/<tid>/schedstat``)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total


def measure_endpoint(server: UwsgiServer, socket_dir: str) -> float | None:
    """The median latency of ``GET /_utd/dump`` (JSON) on ``server``, over
    loopback, with a signed token; ``None`` where the endpoint does not exist."""
    try:
        from flask_utd.ext.signing import make_token
    except ImportError:
        return None
    assert server.port is not None
    token = make_token(SECRET, 60)
    request = (
        f"GET /_utd/dump?token={token} HTTP/1.0\r\nHost: bench\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode()
    times: list[float] = []
    for _ in range(REPS):
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(request)
            chunks = []
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        times.append(time.perf_counter() - started)
        answer = b"".join(chunks)
        head, _, body = answer.partition(b"\r\n\r\n")
        if b" 404 " in head.split(b"\r\n", 1)[0]:
            return None  # no endpoint in this version
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"the endpoint answered {head[:200]!r}")
        if not json.loads(body)["processes"]:
            raise RuntimeError("the endpoint's report has no process")
    return statistics.median(times)


# -- (c) the in-process snapshot against the bare frame walk ---------------------


def bare_walk() -> int:
    """The least a thread dump does: every thread's frames as (file, line, name)."""
    from flask_utd.agent.threads import current_frames  # the GC-safe call on 3.11

    count = 0
    for frame in current_frames().values():
        stack = []
        while frame is not None:
            code = frame.f_code
            stack.append((code.co_filename, frame.f_lineno, code.co_name))
            frame = frame.f_back
        count += len(stack)
    return count


@contextmanager
def parked_threads(count: int, depth: int) -> Iterator[None]:
    release = threading.Event()
    ready = threading.Semaphore(0)

    def dive(level: int) -> None:
        if level < depth:
            dive(level + 1)
        else:
            ready.release()
            release.wait()

    old = threading.stack_size(256 * 1024)
    threads = [
        threading.Thread(target=dive, args=(1,), daemon=True) for _ in range(count)
    ]
    try:
        for thread in threads:
            thread.start()
        for _ in threads:
            ready.acquire()
        yield
    finally:
        release.set()
        for thread in threads:
            thread.join()
        threading.stack_size(old)


def bench_snapshot(table: Table) -> None:
    from flask_utd.agent import threads
    from flask_utd.agent.snapshot import process_report
    from flask_utd.agent.snapshot import thread_reports

    # The snapshot reports at most MAX_THREADS threads (if the limit exists):
    # raised here, so that both sides walk every thread.
    cap = getattr(threads, "MAX_THREADS", None)
    if cap is not None:
        threads.MAX_THREADS = max(cap, max(THREAD_COUNTS) + 100)
    try:
        _bench_snapshot(table, process_report, thread_reports)
    finally:
        if cap is not None:
            threads.MAX_THREADS = cap


def _bench_snapshot(
    table: Table, process_report: Callable[..., Any], thread_reports: Callable[..., Any]
) -> None:
    for count in THREAD_COUNTS:
        with parked_threads(count, DEPTH):
            snap: list[float] = []
            bare: list[float] = []
            full: list[float] = []
            thread_reports()  # warm linecache, as a running agent has it
            for _ in range(SNAPSHOT_REPS):
                started = time.perf_counter()
                bare_walk()
                bare.append(time.perf_counter() - started)
                started = time.perf_counter()
                threads = thread_reports()
                snap.append(time.perf_counter() - started)
                if isinstance(threads, tuple):  # (threads, locals) since issue 4
                    threads = threads[0]
                started = time.perf_counter()
                json.dumps(
                    process_report(
                        role="process",
                        worker_id=None,
                    )
                )
                full.append(time.perf_counter() - started)
            assert len(threads) > count
            b, s, f = (statistics.median(x) for x in (bare, snap, full))
            label = f"{count} threads x {DEPTH} frames"
            table.add(
                Row(
                    "c",
                    f"{label}: snapshot",
                    ms(s),
                    f"bare walk {ms(b)}",
                    s / b,
                    "<= 1.5x",
                    verdict(s / b, 1.5),
                )
            )
            table.add(
                Row(
                    "c",
                    f"{label}: whole dump incl. JSON (info)",
                    ms(f),
                    f"bare walk {ms(b)}",
                    f / b,
                )
            )


def bench_greenlet_snapshot(table: Table, install: Install) -> None:
    """(c) for gevent: the snapshot of a process whose greenlets each serve a
    request, against the bare walk of the same greenlets (bench/greenlets.py, in
    a process of its own: gevent patches a whole process)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.greenlets",
            str(GREENLET_COUNT),
            str(DEPTH),
            str(SNAPSHOT_REPS),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        # Out of the source tree, so that the installed flask_utd is imported.
        cwd=install.site,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([install.site, str(ROOT)])),
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.greenlets failed:\n{done.stderr}")
    result = json.loads(done.stdout.splitlines()[-1])
    s, b = result["snapshot"], result["bare"]
    table.add(
        Row(
            "c",
            f"{GREENLET_COUNT} greenlets x {DEPTH} frames, each serving a request:"
            " snapshot",
            ms(s),
            f"bare gc/gr_frame walk {ms(b)}",
            s / b,
            "<= 1.5x",
            verdict(s / b, 1.5),
        )
    )


# -- (d) throughput with and without utd_bp, (e) the agent's cost ---------------

LOAD = r"""
import socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
request = b"GET /hello HTTP/1.0\r\nHost: bench\r\n\r\n"
count, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(request)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    if b" 200 " not in data[:16]:
        sys.exit("bad answer: %r" % data[:200])
    count += 1
print(count)
"""


def burst(port: int) -> float:
    """Requests per second of :data:`CLIENTS` load-generator processes on loopback."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD, str(port), str(BURST_SECONDS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(CLIENTS)
    ]
    total = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=BURST_SECONDS + 30)
        if proc.returncode != 0:
            raise RuntimeError("the load generator failed")
        total += int(out)
    return total / BURST_SECONDS


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, private = USS) of ``pid`` in KiB."""
    rss = private = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                private += int(line.split()[1])
    return rss, private


def thread_stat(pid: int, tid: int) -> tuple[str, int]:
    """(state, utime + stime in clock ticks) of one thread."""
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[11]) + int(fields[12])


def wakeups(pid: int, tid: int) -> int:
    """How many times a thread has been scheduled off and on again: a thread
    that blocks for good adds none; one that polls adds one per poll."""
    count = 0
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            if line.startswith(
                ("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")
            ):
                count += int(line.split()[1])
    return count


def process_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def blocked_in(pid: int, tid: int) -> str:
    """Where a thread waits: its wchan and system call."""
    parts = []
    try:
        with open(f"/proc/{pid}/task/{tid}/wchan") as f:
            parts.append(f.read().strip() or "?")
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall") as f:
            number = int(f.read().split()[0])
        name = (
            "accept4"
            if ACCEPT4.get(platform.machine()) == number
            else f"syscall {number}"
        )
        parts.append(name)
    except (OSError, ValueError, IndexError):
        pass
    return "/".join(parts) or "unknown"


def bench_wsgi(table: Table, tmp: str) -> None:
    """(d) without the network and the load generator: the same view called
    through the WSGI interface in this process, with and without ``utd_bp``.
    Much steadier than (d) on a busy machine; for information."""
    from flask import Flask
    from werkzeug.test import EnvironBuilder

    from flask_utd import utd_bp
    from flask_utd.agent.lifecycle import stop_agents

    def make(with_utd: bool) -> Flask:
        app = Flask("bench_wsgi")
        app.config["UTD_SOCKET_DIR"] = tempfile.mkdtemp(prefix="w", dir=tmp)
        app.config["UTD_SECRET_KEY"] = SECRET
        if with_utd:
            app.register_blueprint(utd_bp)
        app.add_url_rule("/hello", "hello", lambda: "Hello, World!")
        return app

    apps = {"with": make(True), "without": make(False)}
    environ = EnvironBuilder(path="/hello").get_environ()

    def start_response(*args: Any) -> None:
        pass

    def rate(app: Flask) -> float:
        started = time.perf_counter()
        for _ in range(WSGI_CALLS):
            body = app(dict(environ), start_response)
            b"".join(body)
            getattr(body, "close", lambda: None)()
        return WSGI_CALLS / (time.perf_counter() - started)

    try:
        rate(apps["with"]), rate(apps["without"])  # warm; starts the agent
        rates: dict[str, list[float]] = {"with": [], "without": []}
        for i in range(WSGI_ROUNDS):
            for side in ("with", "without") if i % 2 == 0 else ("without", "with"):
                rates[side].append(rate(apps[side]))
    finally:
        stop_agents()
    rw, ro = statistics.median(rates["with"]), statistics.median(rates["without"])
    table.add(
        Row(
            "d",
            "hello world through WSGI in process (info)",
            f"{rw:.0f}/s",
            f"without {ro:.0f}/s",
            rw / ro,
        )
    )


@contextmanager
def gunicorn_gevent(
    workers: int, socket_dir: str, *, site: str, utd: bool
) -> Iterator[UwsgiServer]:
    """A real ``gunicorn -k gevent`` serving the benchmark's app, flask_utd
    imported from ``site``."""
    binary = Path(sys.executable).parent / "gunicorn"
    if not binary.exists():
        raise SystemExit("gunicorn is not installed in this venv: run `make venv`.")
    log = Path(socket_dir).parent / f"gunicorn-{os.path.basename(socket_dir)}.log"
    env = {
        "BENCH_UTD_SOCKET_DIR": socket_dir,
        "BENCH_UTD": "1" if utd else "0",
        "PYTHONPATH": os.pathsep.join([site, str(ROOT)]),
    }
    options = ["-k", "gevent", "-w", str(workers), "--chdir", site, "bench.app:app"]
    server = GunicornServer(str(binary), options, log, env)
    server.start()
    try:
        wait_for(lambda: len(worker_pids(server.pid)) == workers, "every worker runs")
        yield server
    finally:
        server.stop()


def bench_gevent_throughput(table: Table, tmp: str, install: Install) -> None:
    """(d) under ``gunicorn -k gevent``: requests/s with and without utd_bp."""
    with (
        gunicorn_gevent(
            2, tempfile.mkdtemp(prefix="g", dir=tmp), site=install.site, utd=True
        ) as with_utd,
        gunicorn_gevent(
            2, tempfile.mkdtemp(prefix="h", dir=tmp), site=install.site, utd=False
        ) as without_utd,
    ):
        assert with_utd.port is not None and without_utd.port is not None
        burst(with_utd.port), burst(without_utd.port)  # warm both
        rates: dict[str, list[float]] = {"with": [], "without": []}
        ports = {"with": with_utd.port, "without": without_utd.port}
        for i in range(BURSTS):
            for side in ("with", "without") if i % 2 == 0 else ("without", "with"):
                rates[side].append(burst(ports[side]))
    rw, ro = statistics.median(rates["with"]), statistics.median(rates["without"])
    pairs = [w / o for w, o in zip(rates["with"], rates["without"], strict=True)]
    table.add(
        Row(
            "d",
            "hello world, gunicorn -k gevent, 2 workers: requests/s with utd_bp",
            f"{rw:.0f}/s",
            f"without {ro:.0f}/s; pairs {min(pairs):.2f}-{max(pairs):.2f}x",
            rw / ro,
            ">= 0.98x",
            throughput_verdict(rw / ro, pairs),
        )
    )


def _own_threads(socket_dir: str, master: int, *own: str) -> list[tuple[int, int]]:
    """(pid, native id) of flask-utd's own threads doing ``own`` in every
    process of the server."""
    from flask_utd.core.collector import collect

    report = collect(socket_dir, str(master))
    return [
        (p["pid"], t["native_id"])
        for p in report["processes"]
        for t in p["threads"]
        if (t.get("own") or ("agent" if t["is_agent"] else None)) in own
        and t["native_id"]
    ]


def bench_watchdog(table: Table) -> None:
    """(e) the watchdog's wake-ups while requests are in flight: short requests
    one after another through the tracker, as a sync worker serves them, with a
    count of requests served as uWSGI and gunicorn keep; counted by the
    watchdog itself (the kernel would add the GIL's hand-overs)."""
    from flask_utd.agent import tracking
    from flask_utd.agent import watchdog
    from flask_utd.agent.tracking import RequestTracker

    served = [0]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        served[0] += 1
        time.sleep(0.002)
        return [b"ok"]

    tracked = RequestTracker(app)
    dog = watchdog.start_watchdog(
        threshold=WATCHDOG_SECONDS,
        fmt="text",
        role="worker",
        worker_id=1,
        socket_dir=tempfile.gettempdir(),
        instance="bench",
        served=lambda: served[0],
    )
    assert dog is not None
    try:
        wait_for(lambda: tracking._wake is not None, "the watchdog sleeps")
        before = dog.wakeups
        started = time.monotonic()
        while time.monotonic() - started < WATCHDOG_LOAD_SECONDS:
            tracked({"PATH_INFO": "/", "REQUEST_METHOD": "GET"}, None)  # type: ignore[arg-type]
            time.sleep(0.003)
        took = time.monotonic() - started
        woken = dog.wakeups - before
    finally:
        watchdog.stop_watchdog()
    half = WATCHDOG_SECONDS / 2
    # The first request wakes it; then one look per half threshold.
    bound = took / half + 1
    table.add(
        Row(
            "e",
            f"watchdog wake-ups over {took:.0f} s of requests in flight",
            f"{woken} wake-ups",
            f"{took / half:.0f} half thresholds of {half:g} s",
            woken / (took / half),
            "<= 1 per half threshold",
            "met" if woken <= bound else f"MISSED: {woken} > {bound:.0f}",
        )
    )


def bench_server_costs(table: Table, tmp: str, install: Install) -> None:

    with_dir = tempfile.mkdtemp(prefix="d", dir=tmp)
    without_dir = tempfile.mkdtemp(prefix="n", dir=tmp)
    watchdog_env = {"BENCH_UTD_WATCHDOG": str(WATCHDOG_SECONDS)}
    with (
        uwsgi_server(
            2, with_dir, site=install.site, stuck=False, env_extra=watchdog_env
        ) as with_utd,
        uwsgi_server(
            2, without_dir, site=install.site, utd=False, stuck=False
        ) as without_utd,
    ):
        assert with_utd.port is not None and without_utd.port is not None
        burst(with_utd.port), burst(without_utd.port)  # warm both
        watchdogs = _own_threads(with_dir, with_utd.pid, "watchdog")
        switched = {w: wakeups(*w) for w in watchdogs}
        loaded = 0.0
        rates: dict[str, list[float]] = {"with": [], "without": []}
        ports = {"with": with_utd.port, "without": without_utd.port}
        for i in range(BURSTS):
            # ABBA order: neither side always runs first, on a warmer machine.
            for side in ("with", "without") if i % 2 == 0 else ("without", "with"):
                started = time.monotonic()
                rates[side].append(burst(ports[side]))
                if side == "with":
                    loaded += time.monotonic() - started
        switches = sum(wakeups(*w) - switched[w] for w in watchdogs)
        rw, ro = statistics.median(rates["with"]), statistics.median(rates["without"])
        pairs = [w / o for w, o in zip(rates["with"], rates["without"], strict=True)]
        table.add(
            Row(
                "d",
                "hello world, 2 workers: requests/s with utd_bp",
                f"{rw:.0f}/s",
                f"without {ro:.0f}/s; pairs {min(pairs):.2f}-{max(pairs):.2f}x",
                rw / ro,
                ">= 0.98x",
                throughput_verdict(rw / ro, pairs),
            )
        )

        table.add(
            Row(
                "e",
                f"watchdog threads under load (info): {len(watchdogs)} processes,"
                f" {loaded:.0f} s of requests, UTD_WATCHDOG {WATCHDOG_SECONDS:g} s",
                f"{switches} context switches",
                "GIL hand-overs included; looks: see the next line",
            )
        )
        bench_watchdog(table)
        bench_wsgi(table, tmp)

        # (e) memory, after both served the same load.
        with_workers = worker_pids(with_utd.pid)
        without_workers = worker_pids(without_utd.pid)
        mem_with = [memory_kib(p) for p in with_workers]
        mem_without = [memory_kib(p) for p in without_workers]
        rss_added = (
            statistics.mean(m[0] for m in mem_with)
            - statistics.mean(m[0] for m in mem_without)
        ) / 1024
        uss_added = (
            statistics.mean(m[1] for m in mem_with)
            - statistics.mean(m[1] for m in mem_without)
        ) / 1024
        table.add(
            Row(
                "e",
                "RSS added per worker (utd_bp + agent)",
                f"{rss_added:+.2f} MiB",
                f"private (USS) {uss_added:+.2f} MiB",
                None,
                "<= 3 MiB",
                "met" if rss_added <= 3 else f"MISSED by {rss_added - 3:.2f} MiB",
            )
        )

        # (e) the agent and watchdog threads' CPU while idle, in every process of
        # the server.
        agents = _own_threads(with_dir, with_utd.pid, "agent", "watchdog")
        # Let the agents finish with that collection before watching them.
        last: list[dict[tuple[int, int], int]] = [{}]

        def settled() -> bool:
            now = {a: wakeups(*a) for a in agents}
            quiet = now == last[0]
            last[0] = now
            return quiet

        deadline = time.monotonic() + 10
        while not settled() and time.monotonic() < deadline:
            time.sleep(0.2)
        before = {a: thread_stat(*a)[1] for a in agents}
        woken_before = {a: wakeups(*a) for a in agents}
        proc_before = {p: process_ticks(p) for p in with_workers + without_workers}
        started = time.monotonic()
        bench_snapshot(table)  # runs in this process meanwhile: the server idles
        time.sleep(max(0.0, IDLE_SECONDS - (time.monotonic() - started)))
        idle = time.monotonic() - started
        after = {a: thread_stat(*a) for a in agents}
        woken = sum(wakeups(*a) - woken_before[a] for a in agents)
        ticks = sum(after[a][1] - before[a] for a in agents)
        states = sorted({f"{after[a][0]} in {blocked_in(*a)}" for a in agents})
        hz = os.sysconf("SC_CLK_TCK")
        table.add(
            Row(
                "e",
                f"agent and watchdog threads' CPU over {idle:.0f} s idle"
                f" ({len(agents)} threads)",
                f"{ticks / hz * 1000:.0f} ms, {woken} wake-ups",
                ", ".join(states),
                None,
                "0 ms, blocked",
                "met"
                if ticks == 0 and woken == 0 and all(s.startswith("S") for s in states)
                else "MISSED",
            )
        )
        proc_with = sum(process_ticks(p) - proc_before[p] for p in with_workers) / hz
        proc_without = (
            sum(process_ticks(p) - proc_before[p] for p in without_workers) / hz
        )
        table.add(
            Row(
                "e",
                "workers' CPU over the same idle time (info)",
                f"{proc_with * 1000:.0f} ms",
                f"without utd_bp {proc_without * 1000:.0f} ms",
            )
        )


def main() -> None:
    started = time.monotonic()
    table = Table()
    print(
        f"flask-utd benchmark{' (smoke)' if SMOKE else ''}: {machine()}",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="utdb-", dir="/tmp") as tmp:
        os.chmod(tmp, 0o700)
        install = plain_install(tmp)
        bench_dumps(table, tmp, install)
        bench_server_costs(table, tmp, install)  # runs (c) during (e)'s idle minute
        bench_greenlet_snapshot(table, install)
        bench_gevent_throughput(table, tmp, install)
    print()
    print(f"flask-utd benchmark{' (smoke)' if SMOKE else ''}")
    print(f"machine: {machine()}")
    print(f"uWSGI: master + N workers, {' '.join(UWSGI_OPTIONS)}")
    print(
        f"medians of {RUNS} alternating runs (a), {REPS} repetitions (b),"
        f" {SNAPSHOT_REPS} (c), {BURSTS} ABBA {BURST_SECONDS:g} s bursts of"
        f" {CLIENTS} clients (d), {WSGI_ROUNDS} rounds of {WSGI_CALLS} WSGI calls (d)"
    )
    print()
    print(table.render(), end="")
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
