"""`DEMO_ONCE=1 make demo` shows the master and both workers stuck on /hello."""

from __future__ import annotations

import os
import subprocess
import sys

from demo_app.server import ROOT
from tests.helpers import need_uwsgi


def test_demo_once_shows_master_and_both_stuck_workers(socket_dir: str) -> None:
    need_uwsgi()
    out = subprocess.run(
        [sys.executable, "-m", "demo_app.run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=dict(os.environ, DEMO_ONCE="1", DEMO_UTD_SOCKET_DIR=socket_dir),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "=== master (pid" in text
    for worker_id in (1, 2):
        section = text.split(f"=== worker {worker_id} (pid")[1].split("===")[0]
        assert ": ok" in section.splitlines()[0]
        assert "in hello\n    time.sleep(HELLO_SECONDS)" in section
    assert 'Thread "demo-counter"' in text
