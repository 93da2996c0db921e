"""The package's tiers, as their ``__init__`` modules state them: what each may
import, checked by importing every module of a tier in a fresh interpreter, and
by the import graph (imports inside functions included, no cycles)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import flask_utd
from demo_app.server import ROOT

IMPORT_TIER = """
import json, sys
before = set(sys.modules)
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted(set(sys.modules) - before)))
"""

#: What importing a tier must not bring in, as its rule says.
FORBIDDEN = {
    "core": {"flask", "werkzeug", "click", "itsdangerous", "jinja2", "rpyc"},
    "agent": {"flask", "werkzeug", "click", "itsdangerous", "jinja2"},
    "servers": {"flask", "click", "itsdangerous", "jinja2"},
}
#: The tiers of flask_utd that each tier must not import.
BELOW = {
    "core": {"agent", "servers", "ext"},
    "agent": {"servers", "ext"},
    "servers": {"ext"},
}


def tier_modules(tier: str) -> list[str]:
    package = __import__(f"flask_utd.{tier}", fromlist=["_"])
    return [
        f"flask_utd.{tier}.{info.name}"
        for info in pkgutil.iter_modules(package.__path__)
    ]


def imported_by(modules: list[str]) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_TIER, *modules],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("tier", sorted(FORBIDDEN))
def test_a_tier_imports_only_what_its_rule_allows(tier: str) -> None:
    modules = tier_modules(tier)
    assert len(modules) >= 5
    loaded = imported_by(modules)
    tops = {name.split(".")[0] for name in loaded}
    assert not tops & FORBIDDEN[tier], f"{tier} imports {tops & FORBIDDEN[tier]}"
    ours = {name.split(".")[1] for name in loaded if name.startswith("flask_utd.")}
    assert not ours & BELOW[tier], f"{tier} imports flask_utd.{ours & BELOW[tier]}"
    if tier == "core":
        third_party = {
            top
            for top in tops
            if top not in sys.stdlib_module_names and top != "flask_utd"
        }
        assert not third_party, f"core imports {third_party}"


def test_the_import_graph_has_no_cycle_and_keeps_the_tiers() -> None:
    done = subprocess.run(
        [sys.executable, "tools/import_graph.py", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout
    assert done.stdout == ""


def test_the_graph_sees_imports_inside_functions() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import import_graph
    finally:
        sys.path.remove(str(ROOT / "tools"))
    edges = import_graph.graph()
    # servers.setup imports the agent's lifecycle inside a function only.
    assert "flask_utd.agent.lifecycle" in edges["flask_utd.servers.setup"]
    assert import_graph.cycles({"a.x": {"a.y"}, "a.y": {"a.x"}}) == [
        ["a.x", "a.y", "a.x"]
    ]
    assert import_graph.broken_rules(
        {"flask_utd.core.x": {"flask_utd.ext.setup", "flask", "json"}}
    ) == [
        "flask_utd.core.x imports flask (core tier)",
        "flask_utd.core.x imports flask_utd.ext.setup (core tier)",
    ]


def test_the_public_names_stay() -> None:
    assert {"utd_bp", "UTD", "UTDError", "ConfigError", "SetupError"} <= set(
        flask_utd.__all__
    )
    from flask_utd import UTD  # noqa: F401
    from flask_utd import utd_bp  # noqa: F401
    from flask_utd.gunicorn import child_exit  # noqa: F401
    from flask_utd.gunicorn import on_exit  # noqa: F401
    from flask_utd.gunicorn import post_fork  # noqa: F401
    from flask_utd.gunicorn import pre_fork  # noqa: F401
    from flask_utd.gunicorn import when_ready  # noqa: F401

    done = subprocess.run(
        [sys.executable, "-m", "flask_utd", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0 and "dump" in done.stdout


def test_the_wheel_takes_every_subpackage() -> None:
    # tomllib is in the standard library from 3.11 on; setuptools has no stubs.
    tomllib = pytest.importorskip("tomllib")
    setuptools = pytest.importorskip("setuptools")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    packaged = set(setuptools.find_packages(str(ROOT), include=include))
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "flask_utd").rglob("__init__.py")
    }
    assert {"flask_utd.core", "flask_utd.agent", "flask_utd.ext"} <= on_disk
    assert packaged == on_disk
