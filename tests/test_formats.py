"""The table of output formats (``flask_utd.core.formats``): both command lines
and the endpoint take their formats from it, and the HTML page is the same
wherever it is rendered."""

from __future__ import annotations

import importlib.util
import json
from types import ModuleType
from typing import Any

import pytest
from flask import Flask

from demo_app.server import ROOT
from flask_utd.core.formats import render
from flask_utd.core.page import render_page
from flask_utd.core.render import page_context


def _report() -> dict[str, Any]:
    return {
        "schema": "flask-utd/1",
        "generated_at": "2026-01-01T00:00:12+00:00",
        "host": "h",
        "instance": "10",
        "elapsed_s": 0.01,
        "processes": [
            {
                "pid": 11,
                "role": "worker",
                "worker_id": 1,
                "status": "ok",
                "error": None,
                "threads": [
                    {
                        "ident": 1,
                        "native_id": 1,
                        "name": "<main>",
                        "daemon": False,
                        "is_agent": False,
                        "request": None,
                        "frames": [
                            {"file": "/srv/app.py", "line": 3, "function": "f"},
                            {"file": "/srv/app.py", "line": 7, "function": "g"},
                        ],
                    }
                ],
            }
        ],
    }


def test_json_is_indented_for_people_and_compact_for_the_endpoint() -> None:
    report = _report()
    indented = render(report, "json")
    assert indented == json.dumps(report, indent=2) + "\n"
    compact = render(report, "json", compact=True)
    assert json.loads(compact) == report and compact.count("\n") == 1


def test_an_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'xml': use one of json, text, html"):
        render(_report(), "xml")


def test_the_page_is_the_same_from_jinja_and_from_flask(app: Flask) -> None:
    """``--format html`` prints what ``render_template`` of ``utd_bp``'s
    template gives: the template uses nothing of Flask."""
    from flask import render_template

    report = _report()
    page = render_page(report)
    assert page.startswith("<!doctype html>") and "&lt;main&gt;" in page
    with app.test_request_context():
        assert render_template("utd/dump.html", **page_context(report)) == page
    assert render(report, "html", compact=True) == page


def _import_graph() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "import_graph", ROOT / "tools" / "import_graph.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_core_page_may_import_jinja2() -> None:
    graph = _import_graph()
    edges = graph.graph()
    assert "jinja2" in edges["flask_utd.core.page"]
    assert graph.broken_rules(edges) == []
    for module in ("flask_utd.core.render", "flask_utd.core.formats"):
        broken = dict(edges, **{module: edges[module] | {"jinja2"}})
        assert graph.broken_rules(broken) == [f"{module} imports jinja2 (core tier)"]
    broken = dict(
        edges, **{"flask_utd.core.page": edges["flask_utd.core.page"] | {"flask"}}
    )
    assert graph.broken_rules(broken) == [
        "flask_utd.core.page imports flask (core tier)"
    ]
