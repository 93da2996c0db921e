"""The HTML page in a real headless Chromium, against a live uWSGI whose workers
are all stuck, served by the master's admin listener."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from demo_app.server import ROOT
from tests.helpers import Servers
from tests.helpers import admin_address
from tests.helpers import signed_path
from tests.helpers import start_demo
from tests.helpers import stick
from tests.helpers import wait_stuck

pytestmark = pytest.mark.uwsgi

#: Where docs/endpoint.rst finds the screenshot; written when UTD_SCREENSHOT=1
#: (`make screenshot`), so that a test run leaves the tree clean.
SCREENSHOT = ROOT / "docs" / "_static" / "dump-page.png"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (`make test` installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_chromium(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="utd-chromium-") as profile:
        return subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=90,
            stdin=subprocess.DEVNULL,
        )


def test_the_page_in_chromium_shows_the_stuck_frame(
    servers: Servers, socket_dir: str, tmp_path: Path
) -> None:
    binary = chromium()
    server = start_demo(servers, admin="127.0.0.1:0")
    address = admin_address(server)
    stick(server, 2)
    stuck = wait_stuck(server, socket_dir, 2)
    # No ?format=: Chromium asks for text/html and gets the page.
    url = f"http://{address}{signed_path()}"

    out = run_chromium(binary, "--dump-dom", url)
    assert out.returncode == 0, out.stderr
    dom = out.stdout
    assert "<title>Thread dump" in dom
    for pid in stuck:
        section = dom.split(f'id="pid-{pid}"')[1].split("</section>")[0]
        # The stuck frame, set apart as the innermost one of the request thread.
        now = section.split('class="now"')[1].split("</pre>")[0]
        assert "<b>hello</b>" in now
        assert "time.sleep(HELLO_SECONDS)" in now
        assert "serving a request" in section
    assert any(f"worker {n} (pid {min(stuck)})" in dom for n in (1, 2))
    assert "3 / 3" in dom  # answered / processes
    assert 'class="thread agent' in dom

    shot = tmp_path / "dump-page.png"
    out = run_chromium(binary, f"--screenshot={shot}", "--window-size=1280,1800", url)
    assert out.returncode == 0, out.stderr
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UTD_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
