"""The tokens that authorize ``GET /_utd/dump``: the signature matrix of issue 3,
one named case each, in ``tests.helpers.bad_tokens`` (tests/test_endpoint.py sends
them to the endpoint; tests/test_signing.py fuzzes the same rules)."""

from __future__ import annotations

import time

import pytest
from itsdangerous import URLSafeTimedSerializer

from flask_utd.ext.signing import SALT
from flask_utd.ext.signing import BadToken
from flask_utd.ext.signing import check_token
from flask_utd.ext.signing import make_token
from tests.helpers import MAX_AGE
from tests.helpers import SECRET
from tests.helpers import bad_tokens


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
