"""An idle agent blocks: it never wakes up on a timer (docs/performance.md)."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from flask_utd.agent.lifecycle import start_agent
from flask_utd.agent.lifecycle import stop_agents
from flask_utd.core import wire
from tests.helpers import context_switches
from tests.helpers import wait_for


def _state(tid: int) -> str:
    with open(f"/proc/self/task/{tid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")
def test_idle_agent_never_wakes_up(socket_dir: str) -> None:
    agent = start_agent(socket_dir, "4545", role="process", worker_id=None)
    try:
        # Served once, so that the loop has had a client and gone idle again.
        text = wire.call(agent.path, time.monotonic() + 5, "dump", "{}")
        assert json.loads(text)["pid"] == os.getpid()
        tid = agent.thread.native_id
        assert tid is not None
        last = [-1]

        def settled() -> bool:
            # Done with that client: no switch between two looks 0.2 s apart.
            now = context_switches(tid)
            quiet = now == last[0] and _state(tid) == "S"
            last[0] = now
            return quiet

        wait_for(settled, timeout=10, interval=0.2)
        before = context_switches(tid)
        # Observing that nothing happens takes time: a poll every second or
        # less would wake it at least twice here.
        threading.Event().wait(2.5)
        assert context_switches(tid) - before == 0
        assert _state(tid) == "S"
        # And it still answers at once.
        assert json.loads(wire.call(agent.path, time.monotonic() + 5, "info"))
    finally:
        stop_agents()
    assert not agent.thread.is_alive()
