"""The table of output formats (``flask_utd.core.formats``): both command lines
and the endpoint take their formats from it, and the HTML page is the same
wherever it is rendered."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from types import ModuleType

import pytest
from flask import Flask
from flask.testing import FlaskClient

from demo_app.server import ROOT
from flask_utd.core import lean
from flask_utd.core.formats import FORMATS
from flask_utd.core.formats import render
from flask_utd.core.page import render_page
from flask_utd.core.render import page_context
from flask_utd.core.report import Report
from flask_utd.ext.signing import make_token
from tests.apps.shout import SHOUT

SECRET = "test-secret"  # the app fixture's SECRET_KEY


def _report() -> Report:
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
    with pytest.raises(ValueError, match=f"'xml': use one of {', '.join(FORMATS)}"):
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


def test_a_new_format_is_one_entry_for_both_command_lines_and_the_endpoint(
    app: Flask,
    client: FlaskClient,
    socket_dir: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client.get("/")  # starts this process's agent
    pid = os.getpid()
    monkeypatch.setitem(FORMATS, SHOUT.name, SHOUT)

    # GET /_utd/dump: by ?format= and by Accept; compact, with its media type.
    url = f"/_utd/dump?token={make_token(SECRET, 60)}"
    for response in (
        client.get(f"{url}&format=shout"),
        client.get(url, headers={"Accept": "text/x-shout"}),
    ):
        assert response.status_code == 200 and response.mimetype == "text/x-shout"
        assert response.get_data(as_text=True) == f"SHOUT pids {pid} compact True\n"
    unknown = client.get(f"{url}&format=x").get_json()["error"]
    assert unknown == f"format must be one of {', '.join(FORMATS)}"  # shout too

    # python -m flask_utd dump: the parser is made when the command runs.
    with pytest.raises(SystemExit) as exited:
        lean.main(["dump", "--socket-dir", socket_dir, "--format", "shout"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"SHOUT pids {pid} compact False\n"

    # flask utd dump: the commands are made with utd_bp, when flask_utd.ext is
    # imported, as they would be with an entry written in formats.py.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from flask_utd.core.formats import FORMATS\n"
            "from tests.apps.shout import SHOUT\n"
            "FORMATS[SHOUT.name] = SHOUT\n"
            "from flask.cli import main\n"
            "main()\n",
            *("--app", "tests.apps.plain", "utd", "dump", "--format", "shout"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, DEMO_UTD_SOCKET_DIR=socket_dir, PYTHONPATH=str(ROOT)),
        cwd=ROOT,
    )
    assert (out.returncode, out.stdout) == (0, f"SHOUT pids {pid} compact False\n")

    monkeypatch.undo()
    assert "shout" not in FORMATS
    assert client.get(f"{url}&format=shout").status_code == 400


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
