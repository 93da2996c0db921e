"""Sphinx configuration of the flask-utd documentation (``make docs``)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

project = "flask-utd"
copyright = "flask-utd contributors"
try:
    release = _version("flask-utd")
except PackageNotFoundError:  # building from a source tree that is not installed
    release = "0.0.0"
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    # CHANGES.md and performance.md are Markdown; the other pages reStructuredText.
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
nitpicky = False
autodoc_typehints = "description"
autodoc_member_order = "bysource"
# No intersphinx: the build must work offline (CI, a fresh clone).

html_theme = "furo"
html_title = f"flask-utd {release}"
html_static_path: list[str] = []
