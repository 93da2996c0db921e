"""Print the import graph of flask_utd, and check its tiers and cycles.

    python tools/import_graph.py          # one line per module: what it imports
    python tools/import_graph.py --check  # exit 1 on a cycle or a tier broken

Every import counts, those inside functions included; only imports under
``if TYPE_CHECKING:`` are left out (they never run). The tiers, lowest first,
are the subpackages of flask_utd; each may import its own tier and those below,
and the third-party packages listed for it (each subpackage's ``__init__`` says
why).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flask_utd"

#: Tier -> (tiers of flask_utd it may import, third-party packages it may import).
TIERS: dict[str, tuple[set[str], set[str]]] = {
    "core": ({"core"}, set()),
    "agent": ({"core", "agent"}, {"rpyc", "gevent", "greenlet"}),
    "servers": (
        {"core", "agent", "servers"},
        {"werkzeug", "uwsgi", "uwsgidecorators"},
    ),
    "ext": (
        {"core", "agent", "servers", "ext"},
        {
            "flask",
            "werkzeug",
            "click",
            "itsdangerous",
            "jinja2",
            "rpyc",
            "prometheus_client",
        },
    ),
}
#: Module -> third-party packages it may import beyond its tier's (the rule of
#: its tier says why).
EXCEPTIONS: dict[str, set[str]] = {
    "flask_utd.core.page": {"jinja2"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names of what ``module`` imports (a submodule where the import
    names one)."""
    found: set[str] = set()
    base = module.split(".") if is_package else module.split(".")[:-1]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    anchor = base[: len(base) - child.level + 1]
                    source = ".".join(anchor + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                for alias in child.names:
                    candidate = f"{source}.{alias.name}"
                    if _is_module(candidate):
                        found.add(candidate)
                    else:
                        found.add(source)
            visit(child)

    visit(tree)
    return found


def _is_module(name: str) -> bool:
    if not name.startswith("flask_utd"):
        return False
    rel = Path(*name.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel).is_dir()


def graph() -> dict[str, set[str]]:
    """Every module of flask_utd -> the modules and packages it imports."""
    edges = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        edges[name] = _imports(tree, name, path.name == "__init__.py")
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles among flask_utd's modules (a package's ``__init__`` is left
    out as a target: importing ``flask_utd.x.y`` runs it anyway)."""
    inner = {
        m: {t for t in targets if t in edges and t != m and not _is_init(t)}
        for m, targets in edges.items()
    }
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(inner[node]):
            if state.get(target) == 1:
                found.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                walk(target)
        stack.pop()
        state[node] = 2

    for node in sorted(inner):
        if node not in state:
            walk(node)
    return found


def _is_init(name: str) -> bool:
    return (PACKAGE / Path(*name.split(".")[1:])).is_dir()


def tier_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in TIERS else None


def broken_rules(edges: dict[str, set[str]]) -> list[str]:
    """An import that a tier's rule forbids, one line each."""
    stdlib = set(sys.stdlib_module_names) | {"__future__", "_typeshed"}
    problems = []
    for module, targets in sorted(edges.items()):
        tier = tier_of(module)
        if tier is None:
            continue
        tiers, third_party = TIERS[tier]
        third_party = third_party | EXCEPTIONS.get(module, set())
        for target in sorted(targets):
            top = target.split(".")[0]
            if top == "flask_utd":
                target_tier = tier_of(target) or (
                    target.split(".")[1] if target.count(".") == 1 else None
                )
                if target_tier not in tiers:
                    problems.append(f"{module} imports {target} ({tier} tier)")
            elif top not in stdlib and top not in third_party:
                problems.append(f"{module} imports {target} ({tier} tier)")
    return problems


def main(argv: list[str]) -> int:
    edges = graph()
    if "--check" not in argv:
        for module, targets in edges.items():
            ours = sorted(t for t in targets if t.startswith("flask_utd"))
            print(
                f"{module} -> {', '.join(ours) if ours else '(nothing of flask_utd)'}"
            )
    problems = [" -> ".join(c) for c in cycles(edges)] + broken_rules(edges)
    for problem in problems:
        print(f"FAIL: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
