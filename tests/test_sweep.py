"""A starting agent removes what dead processes of its instance left behind."""

from __future__ import annotations

import os
import subprocess

from flask_utd.agent.lifecycle import start_agent
from flask_utd.agent.lifecycle import stop_agents
from flask_utd.core.sockets import ensure_private_dir


def test_files_of_dead_pids_go_and_live_ones_stay(socket_dir: str) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait(5)
    live = os.getppid()
    directory = ensure_private_dir(os.path.join(socket_dir, "99"))
    left = [
        f"{dead.pid}.sock",
        f"{dead.pid}.fh",
        f"{dead.pid}.unsafe",
        # Killed between bind and rename.
        f"{dead.pid}.sock.{dead.pid}.new",
    ]
    kept = [f"{live}.sock", f"{live}.fh", "notes.txt"]
    for name in left + kept:
        open(os.path.join(directory, name), "w").close()
    agent = start_agent(socket_dir, "99", role="process", worker_id=None)
    try:
        assert sorted(os.listdir(directory)) == sorted(
            [*kept, os.path.basename(agent.path)]
        )
    finally:
        stop_agents()


def test_instances_that_are_gone_go_with_every_file(socket_dir: str) -> None:
    """A uWSGI master stopped by SIGTERM runs no Python code: its socket, its
    faulthandler file and its note stay in an instance whose owner is gone. The
    next agent to start removes them, and the directory; it keeps a live
    instance's, and what is not flask-utd's."""
    dead = subprocess.Popen(["true"])
    dead.wait(5)
    gone = ensure_private_dir(os.path.join(socket_dir, str(dead.pid)))
    for name in ("sock", "fh", "unsafe"):
        open(os.path.join(gone, f"{dead.pid}.{name}"), "w").close()
    odd = ensure_private_dir(os.path.join(socket_dir, "1"))  # pid 1 lives
    open(os.path.join(odd, "1.fh"), "w").close()
    agent = start_agent(socket_dir, "99", role="process", worker_id=None)
    try:
        assert sorted(os.listdir(socket_dir)) == ["1", "99"]
        assert os.listdir(odd) == ["1.fh"]
        assert os.listdir(os.path.join(socket_dir, "99")) == [
            os.path.basename(agent.path)
        ]
    finally:
        stop_agents()
