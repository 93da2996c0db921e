"""``make bench`` in its smoke mode: it runs and prints its table (no thresholds)."""

from __future__ import annotations

import os
import subprocess
import sys

from demo_app.server import ROOT
from tests.helpers import need_uwsgi


def test_bench_smoke_prints_its_table() -> None:
    need_uwsgi()
    out = subprocess.run(
        [sys.executable, "-m", "bench"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, BENCH_SMOKE="1"),
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    header = next(
        i
        for i, line in enumerate(lines)
        if [c.strip() for c in line.split("|")][1:2] == ["measure"]
    )
    rows = [line.split("|") for line in lines[header + 2 :] if line.count("|") == 6]
    sections = {row[0].strip() for row in rows}
    assert sections == {"a", "b", "c", "d", "e"}, out.stdout
    text = out.stdout
    for measure in (
        "python -m flask_utd dump",
        "flask utd dump",
        "collector.collect",
        "GET /_utd/dump",
        "collector.collect_stats",
        "GET /_utd/metrics, server CPU per scrape",
        "snapshot",
        "requests/s with utd_bp",
        "RSS added per worker",
        "CPU over",
    ):
        assert measure in text, measure
    assert "machine:" in text and "Python" in text
