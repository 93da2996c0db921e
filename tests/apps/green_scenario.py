"""Run by tests/test_gevent.py in a child process (gevent patches a whole
process, never the test runner's): ``python -m tests.apps.green_scenario NAME``
prints one JSON line with what the scenario saw.

- ``import``: importing flask-utd and starting its agent imports no gevent.
- ``half-imported``: a dump while ``gevent.monkey`` is in :data:`sys.modules`
  without its names yet (uWSGI patching in its main thread as a dump comes in).
- ``thousand [patch]``: a thousand greenlets inside the request tracker at once,
  each on its own path; the snapshot's greenlet entries and their requests.
  ``patch`` first monkey-patches (the agent's thread is then a bare OS thread),
  without it the greenlets run on an unpatched gevent.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def scenario_import() -> dict[str, Any]:
    import tempfile

    import flask_utd  # noqa: F401
    from flask_utd.agent import lifecycle
    from flask_utd.agent.snapshot import thread_reports

    directory = tempfile.mkdtemp(prefix="utd-")
    lifecycle.start_agent(directory, "1", role="process", worker_id=None)
    threads, _ = thread_reports()
    lifecycle.stop_agents()
    return {"gevent": "gevent" in sys.modules, "threads": len(threads)}


def scenario_half_imported() -> dict[str, Any]:
    import tempfile
    import types

    sys.modules["gevent.monkey"] = types.ModuleType("gevent.monkey")
    from flask_utd.agent import lifecycle
    from flask_utd.core.collector import collect

    directory = tempfile.mkdtemp(prefix="utd-")
    lifecycle.start_agent(directory, "1", role="process", worker_id=None)
    statuses = [
        p["status"] for _ in range(3) for p in collect(directory, "1")["processes"]
    ]
    lifecycle.stop_agents()
    return {"statuses": statuses}


def scenario_thousand(patch: bool) -> dict[str, Any]:
    if patch:
        from gevent import monkey

        monkey.patch_all()
    import tempfile
    import threading

    import gevent
    import gevent.event

    from flask_utd.agent import lifecycle
    from flask_utd.agent import native
    from flask_utd.agent.snapshot import thread_reports
    from flask_utd.agent.tracking import RequestTracker

    count = 1000
    release = gevent.event.Event()
    inside = [0]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        inside[0] += 1
        release.wait()
        return [b""]

    tracker = RequestTracker(app)

    def serve(n: int) -> None:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/item/{n}"}
        tracker(environ, lambda *a: None)  # type: ignore[arg-type]

    # The agent, started after patching: a real OS thread all the same.
    directory = tempfile.mkdtemp(prefix="utd-")
    agent = lifecycle.start_agent(directory, "1", role="process", worker_id=None)
    greenlets = [gevent.spawn(serve, n) for n in range(count)]
    while inside[0] < count:
        gevent.sleep(0.01)
    threads, _ = thread_reports()
    entries = [t for t in threads if t.get("kind") == "greenlet"]
    requests = [t for t in entries if t["request"]]
    main = native.main_thread_ident()
    result = {
        "greenlets": len(entries),
        "requests": len(requests),
        "paths": len({t["request"]["path"] for t in requests}),  # type: ignore[index]
        "waits": sorted({str(t.get("wait")) for t in requests}),
        "on_main_thread": all(t.get("thread_ident") == main for t in entries),
        "hubs": sum(1 for t in entries if t.get("hub")),
        "agent_is_os_thread": agent.thread.ident in sys._current_frames(),
        "agent_named": any(
            t["name"] == "utd-agent" and t.get("own") == "agent" for t in threads
        ),
        "main_named": any(
            t["ident"] == main and t["name"] == threading.main_thread().name
            for t in threads
        ),
    }
    release.set()
    gevent.joinall(greenlets)
    lifecycle.stop_agents()
    return result


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    if name == "import":
        print(json.dumps(scenario_import()))
    elif name == "half-imported":
        print(json.dumps(scenario_half_imported()))
    elif name == "thousand":
        print(json.dumps(scenario_thousand("patch" in args)))
    else:
        sys.exit(f"no scenario {name!r}")
