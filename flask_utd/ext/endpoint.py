"""``GET /_utd/dump``: the signed endpoint that returns the report of the server.

The request thread that serves it only collects: each process's dump is taken by
that process's own agent thread. A process runs at most one collection at a time.

The collector, the renderings and the signing are imported at the first request
to the endpoint, not with the blueprint: every process of the server imports this
module, few of them ever serve a dump, and those modules cost each process about
half a MiB (docs/performance.md). The agent needs none of them.
"""

from __future__ import annotations

import json
import math
import threading
from typing import TYPE_CHECKING

from flask import Response
from flask import current_app
from flask import request

from ..agent import forks
from ..core.config import Settings
from ..core.report import Report
from ..servers.place import current_place
from ..servers.place import roster

if TYPE_CHECKING:
    from ..core.formats import Format

#: How long a request waits for another collection of this process to end
#: before it gets 429.
COLLECT_WAIT = 0.5


#: At most one collection at a time in this process: the processes being asked
#: are the same for every app, so the limit is per process, not per app.
_collecting = threading.Lock()


@forks.renew_in_child
def after_fork_in_child() -> None:
    """Make the collection lock anew in a forked child: a thread of the parent
    (the admin listener) may have held it at the fork, and does not exist here."""
    global _collecting
    _collecting = threading.Lock()


def error_response(status: int, message: str, **headers: str) -> Response:
    response = Response(
        json.dumps({"error": message}) + "\n",
        status=status,
        mimetype="application/json",
    )
    response.headers.update(headers)
    return response


#: What a browser is told about a refused link, by the reason the token was
#: refused: a title and what happened.
_REFUSED = {
    "expired token": (
        "This link has expired",
        "A link to the thread dump is valid for {lifetime} (UTD_URL_MAX_AGE), so"
        " that a link that leaks soon shows nothing.",
    ),
    "missing token": (
        "This address needs a signed link",
        "It shows the thread dump of every process of the server, to whoever"
        " holds a link signed with the server's key, for a few minutes.",
    ),
}
_INVALID = (
    "This link is not valid",
    "It was cut short or changed on the way (a chat or a mail client may do"
    " that), or it was signed with another key than this server's"
    " (UTD_SECRET_KEY, else SECRET_KEY).",
)


def _lifetime(seconds: float) -> str:
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:g} minutes"
    return f"{seconds:g} seconds"


def _refused(reason: str, max_age: float) -> Response:
    """403 for a browser: a small page that says what happened to the link and
    how to get a new one (scripts get the JSON error)."""
    from flask import render_template

    title, what = _REFUSED.get(reason, _INVALID)
    lifetime = _lifetime(max_age)
    page = render_template(
        "utd/denied.html",
        title=title,
        what=what.format(lifetime=lifetime),
        lifetime=lifetime,
        reason=reason,
    )
    response = Response(page, status=403, mimetype="text/html")
    _no_leaks(response)
    return response


def _choose_format() -> Format | None:
    """The format asked for, from :data:`~flask_utd.core.formats.FORMATS`:
    ``?format=``, else the Accept header; ``None`` for an unknown ``?format=``.

    A browser, which prefers ``text/html``, gets the page; ``*/*`` (curl, most
    HTTP libraries) gets the first format, JSON.
    """
    from ..core.formats import FORMATS

    asked = request.args.get("format")
    if asked is not None:
        return FORMATS.get(asked)
    by_type: dict[str, Format] = {}
    for fmt in FORMATS.values():
        by_type.setdefault(fmt.media_type, fmt)
    best = request.accept_mimetypes.best_match(by_type)
    return by_type[best] if best is not None else next(iter(by_type.values()))


def _sampling() -> tuple[int, float] | str:
    """``?samples=N&interval=S``, bounded so that a URL holds the worker that
    serves it for a few seconds at most; or why they are refused."""
    from ..core.samples import DEFAULT_INTERVAL
    from ..core.samples import URL_MAX_INTERVAL
    from ..core.samples import URL_MAX_SAMPLES

    samples = request.args.get("samples", "1")
    if not samples.isdigit() or not 1 <= int(samples) <= URL_MAX_SAMPLES:
        return (
            f"samples must be a whole number from 1 to {URL_MAX_SAMPLES} (use `flask"
            " utd dump --samples N` for more)"
        )
    try:
        interval = float(request.args.get("interval", DEFAULT_INTERVAL))
    except ValueError:
        interval = math.nan
    if not 0 < interval <= URL_MAX_INTERVAL:
        return (
            "interval must be a number of seconds above 0 and at most"
            f" {URL_MAX_INTERVAL:g}"
        )
    return int(samples), interval


def token_problem(settings: Settings) -> str | None:
    """Why this request's token does not authorize it, or ``None`` when it does.

    The token is the signed one of ``flask utd url``, in ``?token=`` or in an
    ``Authorization: Bearer <token>`` header (which stays out of access logs).
    """
    from .signing import MAX_TOKEN_CHARS
    from .signing import BadToken
    from .signing import check_token

    token = request.args.get("token")
    if token is None:
        authorization = request.authorization
        if authorization is not None and authorization.type == "bearer":
            token = authorization.token
    try:
        if token is not None and len(token) > MAX_TOKEN_CHARS:
            raise BadToken("malformed token")
        check_token(settings.secret_key, token, settings.url_max_age)
    except BadToken as err:
        return str(err)
    return None


def dump() -> Response:
    """The thread dump of every process of this server instance.

    Authorized by a signed token (see :func:`flask utd url`) in ``?token=``, or
    in an ``Authorization: Bearer <token>`` header, which stays out of access
    logs; 403 when it is missing, malformed, tampered with or expired, and then
    nothing is collected: a small HTML page that says so and how to get a new
    link for a browser (which asks for the HTML format), a JSON error for
    everyone else. ``?samples=N&interval=S`` (at most 5 samples, 2 s apart)
    takes N dumps and says of every thread whether it moved between them; 400
    beyond those bounds.
    """
    from ..core import collector
    from ..core.formats import FORMATS

    settings = current_app.extensions["utd"].settings
    refused = token_problem(settings)
    if refused is not None:
        chosen = _choose_format()
        if chosen is not None and chosen.media_type == "text/html":
            return _refused(refused, settings.url_max_age)
        return error_response(403, refused)
    fmt = _choose_format()
    if fmt is None:
        return error_response(400, f"format must be one of {', '.join(FORMATS)}")
    sampling = _sampling()
    if isinstance(sampling, str):
        return error_response(400, sampling)
    samples, interval = sampling
    lock = _collecting
    if not lock.acquire(timeout=COLLECT_WAIT):
        retry = math.ceil(settings.timeout + collector.MARGIN)
        return error_response(
            429,
            "another thread dump is being collected by this process; try again"
            f" in {retry} s",
            **{"Retry-After": str(retry)},
        )
    try:
        place = current_place()
        # Never locals: a leaked URL must not show the values in frames.
        if samples > 1:
            report = collector.collect_samples(
                settings.socket_dir,
                place.instance,
                samples=samples,
                interval=interval,
                timeout=settings.timeout,
                roster=roster(),
                slow_after=settings.slow_request,
            )
        else:
            report = collector.collect(
                settings.socket_dir,
                place.instance,
                timeout=settings.timeout,
                roster=roster(),
                slow_after=settings.slow_request,
            )
    finally:
        lock.release()
    return _represent(report, fmt)


def _represent(report: Report, fmt: Format) -> Response:
    response = Response(
        fmt.render(report, compact=True, all_threads=False), mimetype=fmt.media_type
    )
    _no_leaks(response, csp=fmt.media_type == "text/html")
    return response


def _no_leaks(response: Response, *, csp: bool = True) -> None:
    """The URL carries the token: keep it out of caches and Referer headers; an
    HTML page loads nothing and runs no script."""
    response.vary.add("Accept")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    if csp:
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:;"
            " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
