"""Signed dump URLs: tampering, other secrets and salts, expiry, and logs."""

from __future__ import annotations

import json
import logging
import os
import socket
import string
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import assume
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from itsdangerous import TimestampSigner
from itsdangerous import URLSafeTimedSerializer

from flask_utd.agent.lifecycle import start_agent
from flask_utd.agent.lifecycle import stop_agents
from flask_utd.core.collector import collect
from flask_utd.ext.signing import SALT
from flask_utd.ext.signing import BadToken
from flask_utd.ext.signing import check_token
from flask_utd.ext.signing import make_token

secrets = st.one_of(
    st.text(min_size=1, max_size=40), st.binary(min_size=1, max_size=40)
)
URL_SAFE = string.ascii_letters + string.digits + "-_."


def accepted(secret: str | bytes, token: str, max_age: float = 3600) -> bool:
    try:
        check_token(secret, token, max_age)
    except BadToken:
        return False
    return True


def signed_at(secret: str | bytes, payload: object, age: int, salt: str = SALT) -> str:
    """A token signed with the right key, ``age`` seconds ago."""

    class PastSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - age

    return URLSafeTimedSerializer(secret, salt=salt, signer=PastSigner).dumps(payload)


@given(secret=secrets, expires_in=st.integers(5, 10**6))
def test_a_fresh_token_is_accepted(secret: str | bytes, expires_in: int) -> None:
    assert accepted(secret, make_token(secret, expires_in), max_age=expires_in + 5)


@st.composite
def tampered(draw: st.DrawFn, token: str) -> str:
    """``token`` changed in one of the ways a URL gets changed."""
    how = draw(st.sampled_from(["replace", "insert", "delete", "cut", "append"]))
    at = draw(st.integers(0, len(token) - 1))
    if how == "replace":
        new = draw(st.sampled_from(URL_SAFE).filter(lambda c: c != token[at]))
        return token[:at] + new + token[at + 1 :]
    if how == "insert":
        new = draw(st.text(min_size=1, max_size=3))
        return token[:at] + new + token[at:]
    if how == "delete":
        return token[:at] + token[at + 1 :]
    if how == "cut":
        return token[:at]
    return token + draw(st.text(min_size=1, max_size=5))


@given(data=st.data(), secret=secrets)
def test_any_tampering_is_rejected(data: st.DataObject, secret: str | bytes) -> None:
    token = make_token(secret, 600)
    changed = data.draw(tampered(token))
    assume(changed != token)
    assert not accepted(secret, changed)


@given(secret=secrets, other=secrets)
def test_another_secret_is_rejected(secret: str | bytes, other: str | bytes) -> None:
    def as_bytes(s: str | bytes) -> bytes:
        return s.encode() if isinstance(s, str) else s

    assume(as_bytes(secret) != as_bytes(other))
    assert not accepted(other, make_token(secret, 600))


@given(secret=secrets, salt=st.text(max_size=30))
def test_another_salt_is_rejected(secret: str | bytes, salt: str) -> None:
    assume(salt != SALT)
    token = signed_at(secret, {"exp": int(time.time()) + 600}, age=0, salt=salt)
    assert not accepted(secret, token)


def test_a_session_cookie_is_not_a_token() -> None:
    from flask import Flask
    from flask.sessions import SecureCookieSessionInterface

    app = Flask(__name__)
    app.secret_key = "s3cret"
    assert isinstance(app.session_interface, SecureCookieSessionInterface)
    serializer = app.session_interface.get_signing_serializer(app)
    assert serializer is not None
    cookie = serializer.dumps({"exp": int(time.time()) + 600})
    assert not accepted("s3cret", cookie)


@settings(max_examples=200)
@given(
    secret=secrets,
    age=st.integers(0, 10**7),
    max_age=st.floats(1, 10**6),
    exp_offset=st.integers(-(10**7), 10**9),
)
def test_expiry_is_enforced_whatever_the_token_claims(
    secret: str | bytes, age: int, max_age: float, exp_offset: int
) -> None:
    # Keep clear of the boundaries: the clock moves while the test runs.
    assume(abs(age - max_age) > 2 and abs(exp_offset) > 2)
    token = signed_at(secret, {"exp": int(time.time()) + exp_offset}, age=age)
    # Valid only while younger than max_age AND before its own expiry: a far
    # future "exp" does not stretch max_age, and max_age does not stretch "exp".
    assert accepted(secret, token, max_age) == (age < max_age and exp_offset > 0)


@pytest.mark.parametrize(
    "payload",
    [{}, {"exp": "9999999999"}, {"exp": 1.5e12}, [], "x", None, {"exp": True}],
)
def test_payloads_without_an_integer_expiry_are_rejected(payload: object) -> None:
    token = signed_at("k", payload, age=0)
    with pytest.raises(BadToken, match="invalid token"):
        check_token("k", token, 3600)


@pytest.mark.parametrize("token", [None, ""])
def test_a_missing_token_is_rejected(token: str | None) -> None:
    with pytest.raises(BadToken, match="missing token"):
        check_token("k", token, 3600)


def test_an_oversized_token_is_rejected_before_decoding() -> None:
    token = make_token("k", 600)
    with pytest.raises(BadToken, match="invalid token"):
        check_token("k", token + "A" * 10_000, 3600)


# -- nothing secret in the logs ----------------------------------------------


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.DEBUG):
        yield caplog


def test_signing_logs_no_token_or_secret(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    secret = "top-secret-key-4711"
    token = make_token(secret, 600)
    check_token(secret, token, 600)
    for bad in (token[:-2], token + "x", make_token("other", 600)):
        with pytest.raises(BadToken) as info:
            check_token(secret, bad, 600)
        # The reason a client may be shown carries neither.
        assert token not in str(info.value) and secret not in str(info.value)
    assert secret not in debug_logs.text
    assert token not in debug_logs.text


def test_agent_logs_and_reports_no_locals(
    socket_dir: str, debug_logs: pytest.LogCaptureFixture
) -> None:
    secret = "local-secret-0815"
    token = make_token(secret, 600)
    release = threading.Event()

    def holds_secrets(password: str, url_token: str) -> None:
        release.wait()

    holder = threading.Thread(target=holds_secrets, args=(secret, token))
    holder.start()
    agent = start_agent(socket_dir, "4545", role="process", worker_id=None)
    try:
        report = collect(socket_dir, "4545", timeout=5)
        # And a client the agent cuts off, which it logs at debug level.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(agent.path)
        sock.sendall(b"\xff\xff\xff\xff\x00" + secret.encode())
        sock.settimeout(10)
        assert sock.recv(1) == b""
        sock.close()
    finally:
        release.set()
        holder.join(10)
        stop_agents()
    (process,) = report["processes"]
    assert process["status"] == "ok"
    assert any(
        f["function"] == "holds_secrets"
        for t in process["threads"]
        for f in t["frames"]
    )
    text = json.dumps(report)
    assert secret not in text and token not in text
    assert secret not in debug_logs.text and token not in debug_logs.text
    assert any(r.name.startswith("flask_utd") for r in debug_logs.records)
    assert os.getpid() == process["pid"]
