"""``GET /_utd/metrics``: Prometheus metrics of the server instance that serves it.

Meant for the admin listener (``UTD_ADMIN_LISTEN``), which answers while every
worker is stuck: there it needs no token, since a scraper cannot renew one and
the listener's address is the operator's choice (docs/fleet.rst). On the app's
own port it answers only with the dump's signed token, like ``/_utd/dump``.

Each scrape asks every agent for its ``stats`` (:mod:`flask_utd.agent.service`),
which reads the request records and walks no stack. What it costs to build is
imported at the first scrape, as for the dump.
"""

from __future__ import annotations

from flask import Response
from flask import current_app
from flask import request

from ..servers.place import current_place
from ..servers.place import roster
from .endpoint import error_response
from .endpoint import token_problem


def metrics() -> Response:
    """The metrics of every process of this server instance, in Prometheus's
    text format (OpenMetrics if the scraper asks for it).

    On the app's port, authorized by a signed token as the dump is
    (:func:`~flask_utd.ext.endpoint.token_problem`); ``403`` with a JSON error
    otherwise, and nothing is asked.
    """
    from ..core.collector import collect_stats
    from ..servers.admin import SERVED_BY_ADMIN

    settings = current_app.extensions["utd"].settings
    if not request.environ.get(SERVED_BY_ADMIN):
        refused = token_problem(settings)
        if refused is not None:
            return error_response(403, refused)
    stats = collect_stats(
        settings.socket_dir,
        current_place().instance,
        timeout=settings.timeout,
        roster=roster(),
        slow_after=settings.slow_request,
    )
    from .prometheus import exposition

    body, content_type = exposition(stats, request.headers.get("Accept"))
    response = Response(body, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response
