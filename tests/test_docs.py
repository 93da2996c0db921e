"""The documentation keeps up with the settings."""

from __future__ import annotations

import pytest

from demo_app.server import ROOT
from flask_utd.core.config import DEFAULTS


@pytest.mark.parametrize("page", ["docs/configuration.rst", "README.md"])
def test_every_setting_is_documented(page: str) -> None:
    text = (ROOT / page).read_text()
    missing = [key for key in DEFAULTS if key not in text]
    assert missing == [], f"{page} does not describe {missing}"
