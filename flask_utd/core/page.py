"""The HTML page of a report: the package's template ``utd/dump.html``, rendered
with Jinja.

The one module of the core that imports a third-party package, and only when a
page is asked for: Jinja, which Flask depends on, so it is installed wherever
flask-utd is. The same page is served by ``GET /_utd/dump?format=html`` and
printed by ``flask utd dump --format html`` and ``python -m flask_utd dump
--format html``. The template uses nothing of Flask, so ``utd_bp``'s template
folder (the same directory) serves it to ``render_template`` too.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

from .render import page_context
from .report import Report

if TYPE_CHECKING:
    import jinja2

#: The package's templates: ``flask_utd/templates``.
TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "templates")
#: The page, in :data:`TEMPLATES`.
TEMPLATE = "utd/dump.html"


def render_page(report: Report) -> str:
    """The report as one self-contained HTML page: no script, no external asset,
    everything the report carries escaped.

    A summary first (processes, how many answered, threads by state, the requests
    in progress), then each process with its threads (see
    :func:`~flask_utd.core.render.page_context`).
    """
    return _environment().get_template(TEMPLATE).render(page_context(report))


@functools.cache
def _environment() -> jinja2.Environment:
    # Made once, at the first page: it keeps the compiled template.
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True
    )
