"""A bare WSGI app: no Flask, no flask-utd. For facts about uWSGI itself."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from typing import Any


def application(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"bare\n"]
