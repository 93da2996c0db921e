"""The tokens that authorize ``GET /_utd/dump``: the signature matrix of issue 3,
one named case each (tests/test_signing.py fuzzes the same rules)."""

from __future__ import annotations

import base64
import json
import time

import pytest
from itsdangerous import TimestampSigner
from itsdangerous import URLSafeTimedSerializer

from flask_utd.ext.signing import SALT
from flask_utd.ext.signing import BadToken
from flask_utd.ext.signing import check_token
from flask_utd.ext.signing import make_token

SECRET = "test-secret"
MAX_AGE = 300


def signed_at(
    payload: object, *, ago: float = 0, secret: str = SECRET, salt: str = SALT
) -> str:
    """A token as a holder of ``secret`` would sign it ``ago`` seconds ago."""

    class Signer(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - ago)

    return URLSafeTimedSerializer(secret, salt=salt, signer=Signer).dumps(payload)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def tampered_payload(token: str, payload: object) -> str:
    """The token with its payload replaced and its signature kept."""
    _, stamp, signature = token.split(".")
    return ".".join([_b64(json.dumps(payload).encode()), stamp, signature])


def tampered_signature(token: str) -> str:
    head, signature = token.rsplit(".", 1)
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    return f"{head}.{flipped}"


def bad_tokens() -> list[tuple[str, str | None, str]]:
    """``(case, token, reason)``: every way a token must be refused."""
    good = make_token(SECRET, 60)
    far = int(time.time()) + 10**6
    return [
        ("missing", None, "missing token"),
        ("empty", "", "missing token"),
        ("malformed", "not-a-token", "invalid token"),
        ("malformed-dots", "a.b.c.d", "invalid token"),
        ("tampered payload", tampered_payload(good, {"exp": far}), "invalid token"),
        ("tampered signature", tampered_signature(good), "invalid token"),
        ("another secret", make_token("another-secret", 60), "invalid token"),
        ("another salt", signed_at({"exp": far}, salt="itsdangerous"), "invalid token"),
        ("expired (exp)", signed_at({"exp": int(time.time()) - 1}), "expired token"),
        ("expired (age)", signed_at({"exp": far}, ago=MAX_AGE + 5), "expired token"),
        # Signed with the real key, claiming an expiry far away: still refused
        # once the signature is older than UTD_URL_MAX_AGE.
        (
            "forged far-future exp",
            signed_at({"exp": far}, ago=MAX_AGE + 1),
            "expired token",
        ),
        ("no exp", signed_at({"x": 1}), "invalid token"),
        ("exp not a number", signed_at({"exp": "never"}), "invalid token"),
        ("not an object", signed_at([far]), "invalid token"),
        ("signed in the future", signed_at({"exp": far}, ago=-3600), "expired token"),
    ]


@pytest.mark.parametrize(("case", "token", "reason"), bad_tokens())
def test_bad_tokens_are_refused(case: str, token: str | None, reason: str) -> None:
    with pytest.raises(BadToken, match=f"^{reason}$"):
        check_token(SECRET, token, MAX_AGE)


def test_a_fresh_token_is_accepted() -> None:
    check_token(SECRET, make_token(SECRET, 60), MAX_AGE)
    check_token(SECRET.encode(), make_token(SECRET.encode(), 60), MAX_AGE)


def test_a_token_expires_at_its_own_expiry() -> None:
    token = make_token(SECRET, 1)
    check_token(SECRET, token, MAX_AGE)
    deadline = time.monotonic() + 10
    while True:
        try:
            check_token(SECRET, token, MAX_AGE)
        except BadToken as err:
            assert str(err) == "expired token"
            break
        assert time.monotonic() < deadline, "the token did not expire"
        time.sleep(0.1)


def test_the_token_carries_only_its_expiry() -> None:
    token = make_token(SECRET, 60)
    payload = URLSafeTimedSerializer(SECRET, salt=SALT).loads(token)
    assert payload == {"exp": pytest.approx(time.time() + 60, abs=2)}
