"""The documentation keeps up with the settings, and its alert rules work."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from demo_app.server import ROOT
from flask_utd.core.config import DEFAULTS


@pytest.mark.parametrize("page", ["docs/configuration.rst", "README.md"])
def test_every_setting_is_documented(page: str) -> None:
    text = (ROOT / page).read_text()
    missing = [key for key in DEFAULTS if key not in text]
    assert missing == [], f"{page} does not describe {missing}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_the_alert_rules_of_docs_fleet_pass_promtool() -> None:
    """docs/prometheus/: the rules load, and fire as their test file says."""
    where = ROOT / "docs" / "prometheus"
    for args in (
        ["check", "rules", "flask-utd.rules.yml"],
        ["test", "rules", "flask-utd.rules.test.yml"],
    ):
        out = subprocess.run(
            ["promtool", *args], cwd=where, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stdout + out.stderr
