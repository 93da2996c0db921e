"""Signed, expiring tokens that authorize reading the dump (``GET /_utd/dump``).

A token is an itsdangerous ``URLSafeTimedSerializer`` signature, salted for this
one purpose, over a payload that carries its own expiry. The server checks both
the signature's age against ``UTD_URL_MAX_AGE`` and the expiry in the payload, so
a token can be made shorter-lived than the maximum but never longer, whatever it
claims.
"""

from __future__ import annotations

import math
import re
import time

from itsdangerous import BadData
from itsdangerous import BadSignature
from itsdangerous import SignatureExpired
from itsdangerous import URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode
from itsdangerous.encoding import base64_encode

from ..core.errors import UTDError

#: The salt that keeps these tokens from being valid for anything else signed
#: with the same secret (sessions, other extensions).
SALT = "flask-utd.dump"
#: Longest token accepted; the tokens made here are about 60 characters.
MAX_TOKEN_CHARS = 512
#: payload.timestamp.signature, URL-safe base64 each (a leading "." marks a
#: compressed payload).
_TOKEN_SHAPE = re.compile(r"\.?[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class BadToken(UTDError):
    """The token is missing, malformed, tampered with, or expired."""


def _serializer(secret_key: str | bytes) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=SALT)


def _canonical(token: str) -> bool:
    """Whether ``token`` is exactly as :func:`make_token` writes tokens.

    itsdangerous's base64 decoding skips characters outside the alphabet and
    the unused low bits of the last character, so that many strings carry one
    valid signature. Only the one that was issued is accepted here.
    """
    if len(token) > MAX_TOKEN_CHARS or not _TOKEN_SHAPE.fullmatch(token):
        return False
    try:
        return all(
            base64_encode(base64_decode(part)).decode("ascii") == part
            for part in token.lstrip(".").split(".")
        )
    except BadData:
        return False


def make_token(secret_key: str | bytes, expires_in: float) -> str:
    """A token that authorizes reading the dump for ``expires_in`` seconds.

    :param secret_key: ``UTD_SECRET_KEY``, else ``SECRET_KEY``.
    :param expires_in: the lifetime in seconds, at most ``UTD_URL_MAX_AGE``.
    """
    return _serializer(secret_key).dumps({"exp": int(time.time() + expires_in)})


def check_token(secret_key: str | bytes, token: str | None, max_age: float) -> None:
    """Check a token; return quietly if it authorizes reading the dump now.

    :param max_age: ``UTD_URL_MAX_AGE``: no token is valid longer after signing.
    :raises BadToken: with a short reason that may be shown to the client.
    """
    if not token:
        raise BadToken("missing token")
    if not _canonical(token):
        raise BadToken("invalid token")
    try:
        # Signing times are whole seconds, so an age is over ``max_age`` exactly
        # when it is over its floor (and itsdangerous takes an int).
        payload = _serializer(secret_key).loads(token, max_age=math.floor(max_age))
    except SignatureExpired as err:
        raise BadToken("expired token") from err
    except BadSignature as err:
        raise BadToken("invalid token") from err
    if not isinstance(payload, dict) or type(payload.get("exp")) is not int:
        raise BadToken("invalid token")
    if payload["exp"] < time.time():
        raise BadToken("expired token")
