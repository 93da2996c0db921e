"""Signed, expiring tokens that authorize reading the dump (``GET /_utd/dump``).

A token is an itsdangerous ``URLSafeTimedSerializer`` signature, salted for this
one purpose, over a payload that carries its own expiry. The server checks both
the signature's age against ``UTD_URL_MAX_AGE`` and the expiry in the payload, so
a token can be made shorter-lived than the maximum but never longer, whatever it
claims.
"""

from __future__ import annotations

import math
import time

from itsdangerous import BadSignature
from itsdangerous import SignatureExpired
from itsdangerous import URLSafeTimedSerializer

from .errors import UTDError

#: The salt that keeps these tokens from being valid for anything else signed
#: with the same secret (sessions, other extensions).
SALT = "flask-utd.dump"


class BadToken(UTDError):
    """The token is missing, malformed, tampered with, or expired."""


def _serializer(secret_key: str | bytes) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=SALT)


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
    try:
        # Signing times are whole seconds, so an age is over ``max_age`` exactly
        # when it is over its floor (and itsdangerous takes an int).
        payload = _serializer(secret_key).loads(token, max_age=math.floor(max_age))
    except SignatureExpired as err:
        raise BadToken("expired token") from err
    except BadSignature as err:
        raise BadToken("invalid token") from err
    if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int):
        raise BadToken("invalid token")
    if payload["exp"] < time.time():
        raise BadToken("expired token")
