"""The documentation keeps up with the settings, its first snippets run as
pasted, and its alert rules work."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from demo_app.server import ROOT
from flask_utd.core.config import DEFAULTS

#: The pages a new user copies from first.
FIRST_PAGES = ["README.md", "docs/index.rst", "docs/quickstart.rst"]


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


def python_blocks(page: str) -> list[str]:
    """The Python code blocks of a Markdown or reStructuredText page, as a
    reader would copy them."""
    text = (ROOT / page).read_text()
    if page.endswith(".md"):
        return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)
    blocks = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != ".. code-block:: python":
            continue
        body = []
        for following in lines[i + 1 :]:
            if following and not following.startswith((" ", "\t")):
                break
            body.append(following)
        blocks.append(textwrap.dedent("\n".join(body)).strip() + "\n")
    return blocks


SNIPPETS = [(page, n) for page in FIRST_PAGES for n in range(len(python_blocks(page)))]


def test_the_first_pages_have_snippets() -> None:
    assert {page for page, _ in SNIPPETS} == set(FIRST_PAGES)
    assert len(SNIPPETS) >= 5


@pytest.mark.parametrize(("page", "number"), SNIPPETS)
def test_a_snippet_runs_as_pasted(page: str, number: int, tmp_path: Path) -> None:
    """Saved as ``yourapp.py`` in an empty directory and imported (its
    ``create_app()`` called, if it has one), it sets flask-utd up."""
    (tmp_path / "yourapp.py").write_text(python_blocks(page)[number])
    check = (
        "import yourapp\n"
        "app = yourapp.create_app() if hasattr(yourapp, 'create_app')"
        " else yourapp.app\n"
        "assert 'utd' in app.extensions, app.extensions\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=dict(
            os.environ, PYTHONPATH=str(ROOT), UTD_SOCKET_DIR=str(tmp_path / "utd")
        ),
    )
    assert out.returncode == 0, f"{page}, Python block {number + 1}:\n{out.stderr}"


@pytest.mark.parametrize("page", ["README.md", "docs/quickstart.rst"])
def test_install_from_a_checkout_until_a_release(page: str) -> None:
    """flask-utd is not on PyPI: ``pip install flask-utd`` would fail."""
    text = (ROOT / page).read_text()
    assert "pip install ." in text
    assert not re.search(r"^\s*\$?\s*pip install flask-utd\s*$", text, re.M)
