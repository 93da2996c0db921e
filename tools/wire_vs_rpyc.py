"""Is the hand-written RPyC client worth keeping? Its cost against RPyC's own.

    python tools/wire_vs_rpyc.py [--runs 30] [--agents 1]

Prints, for ``import flask_utd.core.wire`` and ``import rpyc``, the import time
that ``python -X importtime`` reports (the modules the statement imports beyond
a bare start-up); then the wall time of the lean command, ``python -m flask_utd
dump``, against live agents (each in a process of its own), once as it is
(:mod:`flask_utd.core.wire`) and once with the collector's calls made through
:func:`flask_utd.agent.rpc.connect` instead. Both variants start through the
same wrapper and alternate, run after run, so that the machine's load falls on
both alike; the ratios compare the two within this run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: A process with a few idle threads and an agent, until its stdin closes; the
#: instance is the pid in argv[2], or its own.
AGENT = """
import os, sys, threading
from flask_utd.agent.lifecycle import start_agent
stop = threading.Event()
for n in range(8):
    threading.Thread(target=stop.wait, name=f"idle-{n}", daemon=True).start()
instance = sys.argv[2] if len(sys.argv) > 2 else str(os.getpid())
start_agent(sys.argv[1], instance, role="process", worker_id=None)
print("ready", flush=True)
sys.stdin.read()
"""

#: The lean command, with the collector's calls made by ``rpc.connect`` when
#: the first argument is ``rpyc``.
LEAN = """
import runpy, sys
if sys.argv[1] == "rpyc":
    from flask_utd.core import wire

    def call_all(calls, deadline, meanwhile=None):
        from flask_utd.agent.rpc import connect

        if meanwhile is not None:
            meanwhile()
        for call in calls:
            try:
                conn = connect(call.path, deadline)
                call.connected = True
                try:
                    call.value = getattr(conn.root, call.name)(*call.args)
                finally:
                    conn.close()
            except Exception as err:
                call.error = err
            call.done = True

    wire.call_all = call_all
sys.argv = ["flask_utd", *sys.argv[2:]]
runpy.run_module("flask_utd", run_name="__main__", alter_sys=True)
"""


def import_ms(statement: str, runs: int) -> float:
    """Median over ``runs`` of what ``statement`` adds to a bare start-up's
    imports, in ms (cumulative times of the top-level imports it makes)."""

    def top_level(code: str) -> dict[str, int]:
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        found: dict[str, int] = {}
        for line in out.stderr.splitlines():
            if not line.startswith("import time:") or "cumulative" in line:
                continue
            _self, cumulative, name = line[len("import time:") :].split("|")
            if not name.startswith("  "):  # nested imports are indented more
                found[name.strip()] = int(cumulative)
        return found

    totals = []
    for _ in range(runs):
        bare = top_level("pass")
        made = top_level(statement)
        totals.append(sum(us for name, us in made.items() if name not in bare))
    return statistics.median(totals) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--agents", type=int, default=1)
    args = parser.parse_args()

    wire_ms = import_ms("import flask_utd.core.wire", args.runs)
    rpyc_ms = import_ms("import rpyc", args.runs)
    rpc_ms = import_ms("import flask_utd.agent.rpc", args.runs)
    print(f"import flask_utd.core.wire  {wire_ms:7.1f} ms (median of {args.runs})")
    print(f"import rpyc                 {rpyc_ms:7.1f} ms")
    print(f"import flask_utd.agent.rpc  {rpc_ms:7.1f} ms")

    socket_dir = tempfile.mkdtemp(prefix="utd-bench-", dir="/tmp")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    agents: list[subprocess.Popen[str]] = []
    try:
        # The first agent's pid names the instance, as a master's would.
        instance: list[str] = []
        for _ in range(args.agents):
            proc = subprocess.Popen(
                [sys.executable, "-c", AGENT, socket_dir, *instance],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env=env,
            )
            agents.append(proc)
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            instance = instance or [str(proc.pid)]
        times: dict[str, list[float]] = {"wire": [], "rpyc": []}
        for run in range(args.runs + 2):
            for variant in times:
                cmd = [sys.executable, "-c", LEAN, variant, "dump"]
                cmd += ["--socket-dir", socket_dir]
                started = time.perf_counter()
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                took = time.perf_counter() - started
                if out.returncode != 0 or out.stdout.count("): ok") != len(agents):
                    sys.exit(f"{variant} failed: {out.stdout[-500:]}{out.stderr}")
                if run >= 2:  # the first runs warm the caches
                    times[variant].append(took * 1000)
    finally:
        for proc in agents:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(socket_dir, ignore_errors=True)

    wire_runs, rpyc_runs = times["wire"], times["rpyc"]
    ratios = [r / w for w, r in zip(wire_runs, rpyc_runs, strict=True)]
    print(f"python -m flask_utd dump, {args.agents} agent(s), {args.runs} runs each:")
    for name, runs in times.items():
        q = statistics.quantiles(runs, n=10)
        print(
            f"  {name:5} median {statistics.median(runs):6.1f} ms"
            f"  p10 {q[0]:6.1f}  p90 {q[-1]:6.1f}"
        )
    print(f"  rpyc / wire, run by run: median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
