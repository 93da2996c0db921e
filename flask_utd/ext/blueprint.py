"""``utd_bp``: the blueprint that is the whole set-up of flask-utd."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from flask import Blueprint
from flask import Flask
from flask.blueprints import BlueprintSetupState

from .endpoint import dump
from .metrics import metrics
from .setup import set_up

#: Register it on an app and every process of its server gets a dump agent:
#: ``app.register_blueprint(utd_bp)``. URL prefix ``/_utd``, CLI group ``utd``.
utd_bp = Blueprint(
    "utd",
    __name__,
    url_prefix="/_utd",
    cli_group="utd",
    # flask_utd/templates, beside the subpackages.
    template_folder=str(Path(__file__).resolve().parent.parent / "templates"),
)
utd_bp.add_url_rule("/dump", view_func=dump, methods=["GET"])
utd_bp.add_url_rule("/metrics", view_func=metrics, methods=["GET"])


@utd_bp.record_once
def _set_up(state: BlueprintSetupState) -> None:
    # A blueprint is registered on a Flask app; ``state.app`` is typed as the
    # sans-io base class.
    set_up(cast(Flask, state.app))


from . import cli as _cli  # noqa: E402  (registers ``flask utd ...`` on utd_bp.cli)

_cli.register(utd_bp)
