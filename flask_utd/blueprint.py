"""``utd_bp``: the blueprint that is the whole set-up of flask-utd."""

from __future__ import annotations

import os
from typing import cast

from flask import Blueprint
from flask import Flask
from flask import current_app
from flask import request
from flask.blueprints import BlueprintSetupState

from .extension import UTD
from .extension import UTDState
from .servers import current_place
from .servers import start_for_place
from .tracking import request_ended
from .tracking import request_started

#: Register it on an app and every process of its server gets a dump agent:
#: ``app.register_blueprint(utd_bp)``. URL prefix ``/_utd``, CLI group ``utd``.
utd_bp = Blueprint("utd", __name__, url_prefix="/_utd", cli_group="utd")


@utd_bp.record_once
def _set_up(state: BlueprintSetupState) -> None:
    # A blueprint is registered on a Flask app; ``state.app`` is typed as the
    # sans-io base class.
    UTD().init_app(cast(Flask, state.app))


@utd_bp.before_app_request
def _track_request() -> None:
    # First of utd_bp's hooks, so that the start time is as early as it can be.
    # The request is taken out of its proxy once: each attribute read through
    # the proxy costs a context-variable look-up.
    request_started(
        request._get_current_object(),  # type: ignore[attr-defined]
        current_app.extensions["utd"].settings.capture_query,
    )


@utd_bp.teardown_app_request
def _forget_request(exc: BaseException | None) -> None:
    request_ended()


@utd_bp.before_app_request
def _agent_for_this_process() -> None:
    # Outside uWSGI, a process's agent starts at the first request it serves:
    # that is the first moment known to be in a serving process, after any fork.
    state: UTDState = current_app.extensions["utd"]
    pid = os.getpid()
    if state.agent_pid != pid:
        state.agent_pid = pid
        if not state.server_managed:
            start_for_place(state.settings, current_place())


from . import cli as _cli  # noqa: E402  (registers ``flask utd ...`` on utd_bp.cli)

_cli.register(utd_bp)
