"""(c) for greenlets, in a process of its own (gevent patches a whole process):
``python -m bench.greenlets COUNT DEPTH REPS`` prints one JSON line, the medians
in seconds of the snapshot and of the bare walk over the same greenlets.

Every greenlet serves a request (through flask-utd's request tracker), ``DEPTH``
frames deep, waiting on an event, as a gevent worker's greenlets do; the bare
walk is the least a dump of them does: find them among the garbage collector's
objects (gevent keeps no list) and read every frame's file, line and function.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import greenlet  # noqa: E402

from flask_utd.agent.snapshot import thread_reports  # noqa: E402
from flask_utd.agent.threads import current_frames  # noqa: E402
from flask_utd.agent.tracking import RequestTracker  # noqa: E402


def bare_walk() -> int:
    count = 0
    stacks = list(current_frames().values())
    stacks += [g.gr_frame for g in gc.get_objects() if isinstance(g, greenlet.greenlet)]
    for frame in stacks:
        stack = []
        while frame is not None:
            code = frame.f_code
            stack.append((code.co_filename, frame.f_lineno, code.co_name))
            frame = frame.f_back
        count += len(stack)
    return count


def main() -> None:
    count, depth, reps = (int(a) for a in sys.argv[1:4])
    release = gevent.event.Event()
    inside = [0]

    def dive(level: int) -> None:
        if level < depth:
            dive(level + 1)
        else:
            inside[0] += 1
            release.wait()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        dive(1)
        return [b""]

    tracker = RequestTracker(app)  # type: ignore[arg-type]

    def serve(n: int) -> None:
        tracker({"REQUEST_METHOD": "GET", "PATH_INFO": f"/{n}"}, None)  # type: ignore[arg-type]

    greenlets = [gevent.spawn(serve, n) for n in range(count)]
    while inside[0] < count:
        gevent.sleep(0.01)
    threads, _ = thread_reports()  # warm linecache, as a running agent has it
    assert sum(1 for t in threads if t.get("request")) == count, len(threads)
    snap: list[float] = []
    bare: list[float] = []
    for _ in range(reps):
        started = time.perf_counter()
        bare_walk()
        bare.append(time.perf_counter() - started)
        started = time.perf_counter()
        thread_reports()
        snap.append(time.perf_counter() - started)
    release.set()
    gevent.joinall(greenlets)
    print(
        json.dumps(
            {"snapshot": statistics.median(snap), "bare": statistics.median(bare)}
        )
    )


if __name__ == "__main__":
    main()
