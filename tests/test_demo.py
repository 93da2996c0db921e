"""`DEMO_ONCE=1 make demo` shows the master and both stuck workers, and a signed
URL of the dump page served by the master's admin listener, without a warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from demo_app.server import ROOT
from tests.helpers import need_uwsgi


def test_demo_once_shows_master_and_both_stuck_workers_and_the_page(
    socket_dir: str,
) -> None:
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
    assert "2 requests in progress, 2 stuck (older than 5 s), oldest first:" in text
    # The master runs the admin listener; the demo checked that the URL it
    # prints answers with the page.
    master = text.split("=== master (pid")[1].split("===")[0]
    assert 'Thread "utd-admin"' in master
    page = re.compile(r"^    http://127\.0\.0\.1:\d+/_utd/dump\?token=\S+$", re.M)
    assert len(page.findall(text)) == 1, text
    assert "Open it in a browser" in text
    # Nothing else: no warning from the demo, the CLI or the server.
    assert "warn" not in (text + out.stderr).lower()
    assert out.stderr == ""
