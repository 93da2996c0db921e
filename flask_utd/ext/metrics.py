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
from .endpoint import _error


def metrics() -> Response:
    """The metrics of every process of this server instance, in Prometheus's
    text format (OpenMetrics if the scraper asks for it).

    On the app's port, authorized by a signed token in ``?token=`` as the dump
    is; ``403`` with a JSON error otherwise, and nothing is asked.
    """
    from ..core.collector import collect_stats
    from ..servers.admin import SERVED_BY_ADMIN

    settings = current_app.extensions["utd"].settings
    if not request.environ.get(SERVED_BY_ADMIN):
        from .signing import MAX_TOKEN_CHARS
        from .signing import BadToken
        from .signing import check_token

        token = request.args.get("token")
        try:
            if token is not None and len(token) > MAX_TOKEN_CHARS:
                raise BadToken("malformed token")
            check_token(settings.secret_key, token, settings.url_max_age)
        except BadToken as err:
            return _error(403, str(err))
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
