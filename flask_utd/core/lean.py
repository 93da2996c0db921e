"""``python -m flask_utd dump`` and ``merge``: the lean commands, without Flask,
click or RPyC.

A dump is taken when the server is in trouble, so this command is built to start
fast: it imports only the standard library's cheapest modules (not even
:mod:`argparse`), the collector and
:mod:`flask_utd.wire`. Its options, output and exit codes are those of
``flask utd dump`` (:mod:`flask_utd.cli`). ``merge`` reads report files
(:mod:`.merge`); only its HTML format imports Jinja.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .collector import SLOW_AFTER
from .collector import all_answered
from .collector import collect
from .collector import find_instance
from .errors import EXIT_OK
from .errors import EXIT_PARTIAL
from .errors import EXIT_USAGE
from .errors import InstanceNotFound
from .render import render_text

USAGE = """\
Usage: {prog} dump [OPTIONS]

  Print a thread dump of every process of the running server.

Options:
  --socket-dir DIR     The server's UTD_SOCKET_DIR (default: the per-user
                       directories).
  --format FORMAT      text (default), json (the flask-utd/1 report) or jsonl
                       (one JSON object per thread per line, for log
                       pipelines).
  --json               The same as --format json.
  --pid PID            Only this process.
  --instance ID        The server instance (its master's pid), when several
                       are running.
  --timeout SECONDS    Each process's deadline in seconds, more than 0 and at
                       most 60 (default: 2).
  --locals             Show the locals of the innermost frames (the app must
                       set UTD_LOCALS).
  --slow-after SECONDS List requests older than this many seconds first, as
                       stuck (default: 5).
  --help               Show this message and exit.
"""


MERGE_USAGE = """\
Usage: {prog} merge [OPTIONS] REPORT...

  Merge the flask-utd/1 reports of several hosts or server instances into
  one. A REPORT is a file of one report or more (`dump --format json`), or -
  for standard input.

Options:
  --format FORMAT      text (default), json, html or jsonl.
  --slow-after SECONDS List requests older than this many seconds first, as
                       stuck (default: the reports' own).
  --help               Show this message and exit.
"""

#: What ``--format`` takes, per command.
DUMP_FORMATS = ("text", "json", "jsonl")
MERGE_FORMATS = ("text", "json", "html", "jsonl")


class _Usage(Exception):
    """A command line this command does not take."""


def _parse(argv: Sequence[str]) -> dict[str, Any]:
    """The options of ``dump``, parsed by hand: :mod:`argparse` and what it pulls
    in (``gettext``, ``locale``, ``shutil``) cost more than a dump's whole budget."""
    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        raise _Usage("")
    if args[0] != "dump":
        raise _Usage(f"no such command {args[0]!r}.")
    options: dict[str, Any] = {
        "socket_dir": None,
        "format": None,
        "as_json": False,
        "pid": None,
        "instance": None,
        "timeout": 2.0,
        "show_locals": False,
        "slow_after": SLOW_AFTER,
    }
    takes_value = {
        "--socket-dir",
        "--format",
        "--pid",
        "--instance",
        "--timeout",
        "--slow-after",
    }
    rest = args[1:]
    while rest:
        arg = rest.pop(0)
        if arg in ("-h", "--help"):
            raise _Usage("")
        name, eq, value = arg.partition("=")
        if name == "--json" and not eq:
            options["as_json"] = True
            continue
        if name == "--locals" and not eq:
            options["show_locals"] = True
            continue
        if name not in takes_value:
            raise _Usage(f"no such option: {name}")
        if not eq:
            if not rest:
                raise _Usage(f"option {name} requires an argument.")
            value = rest.pop(0)
        if name == "--socket-dir":
            options["socket_dir"] = value
        elif name == "--format":
            options["format"] = _format(value, DUMP_FORMATS)
        elif name == "--instance":
            options["instance"] = value
        elif name == "--pid":
            try:
                options["pid"] = int(value)
            except ValueError:
                raise _Usage(
                    f"invalid value for --pid: {value!r} is not an integer."
                ) from None
        elif name == "--slow-after":
            options["slow_after"] = _slow_after(value)
        else:
            try:
                timeout = float(value)
            except ValueError:
                timeout = float("nan")
            if not 0 < timeout <= 60:
                raise _Usage(
                    f"invalid value for --timeout: {value!r} is not a number more"
                    " than 0 and at most 60."
                )
            options["timeout"] = timeout
    return options


def _format(value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise _Usage(
            f"invalid value for --format: {value!r} is not one of {', '.join(choices)}."
        )
    return value


def _slow_after(value: str) -> float:
    try:
        slow = float(value)
    except ValueError:
        slow = float("nan")
    if not slow >= 0:
        raise _Usage(
            f"invalid value for --slow-after: {value!r} is not a number of"
            " seconds (0 or more)."
        )
    return slow


def collect_one(
    socket_dirs: Sequence[str],
    *,
    instance: str | None = None,
    pid: int | None = None,
    timeout: float = 2.0,
    show_locals: bool = False,
    slow_after: float = SLOW_AFTER,
) -> dict[str, Any]:
    """The report of the one running instance (or of process ``pid`` in it).

    Shared by this command and ``flask utd dump``.

    :raises InstanceNotFound: no instance, several, or no process ``pid``.
    """
    socket_dir, found = find_instance(socket_dirs, instance)
    report = collect(
        socket_dir,
        found,
        timeout=timeout,
        pid=pid,
        options={"locals": True} if show_locals else None,
        slow_after=slow_after,
    )
    if pid is not None and not report["processes"]:
        raise InstanceNotFound(f"no process {pid} in server instance {found}.")
    return report


def report_text(report: dict[str, Any], as_json: bool) -> str:
    """The report as the commands print it: JSON, or the readable dump."""
    return render(report, "json" if as_json else "text")


def render(report: dict[str, Any], fmt: str) -> str:
    """The report as the commands print it in format ``fmt``: ``text``,
    ``json``, ``jsonl`` or ``html``."""
    if fmt == "json":
        return json.dumps(report, indent=2) + "\n"
    if fmt == "jsonl":
        from .jsonl import render_jsonl

        return render_jsonl(report)
    if fmt == "html":
        from .render import render_html

        return render_html(report)
    return render_text(report)


def exit_code(report: dict[str, Any]) -> int:
    """0 when every process answered, 3 when some did not."""
    return EXIT_OK if all_answered(report) else EXIT_PARTIAL


def dump(
    socket_dirs: Sequence[str],
    *,
    instance: str | None = None,
    pid: int | None = None,
    as_json: bool = False,
    timeout: float = 2.0,
    show_locals: bool = False,
    slow_after: float = SLOW_AFTER,
    fmt: str | None = None,
) -> int:
    """Collect the report of the one running instance, print it, return the exit code.

    :param fmt: ``text``, ``json`` or ``jsonl``; by default ``json`` with
        ``as_json``, else ``text``.
    :returns: 0 when every process answered, 2 on a usage error (said on
        stderr), 3 when some process did not answer.
    """
    try:
        report = collect_one(
            socket_dirs,
            instance=instance,
            pid=pid,
            timeout=timeout,
            show_locals=show_locals,
            slow_after=slow_after,
        )
    except InstanceNotFound as err:
        print(f"Error: {err}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(render(report, fmt or ("json" if as_json else "text")))
    sys.stdout.flush()
    return exit_code(report)


def _parse_merge(argv: Sequence[str]) -> dict[str, Any]:
    """The options and files of ``merge``, parsed by hand like ``dump``'s."""
    options: dict[str, Any] = {"format": "text", "slow_after": None, "paths": []}
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg in ("-h", "--help"):
            raise _Usage("")
        if arg == "--":
            options["paths"] += rest
            break
        if arg == "-" or not arg.startswith("-"):
            options["paths"].append(arg)
            continue
        name, eq, value = arg.partition("=")
        if name not in ("--format", "--slow-after"):
            raise _Usage(f"no such option: {name}")
        if not eq:
            if not rest:
                raise _Usage(f"option {name} requires an argument.")
            value = rest.pop(0)
        if name == "--format":
            options["format"] = _format(value, MERGE_FORMATS)
        else:
            options["slow_after"] = _slow_after(value)
    if not options["paths"]:
        raise _Usage("no REPORT: give report files, or - for standard input.")
    return options


def merge(
    paths: Sequence[str], *, fmt: str = "text", slow_after: float | None = None
) -> int:
    """Merge the reports in ``paths`` (``-`` for standard input), print the
    merged report in ``fmt``, return the exit code.

    :returns: 0, or 2 when an input cannot be merged (said on stderr, in one
        line).
    """
    from .errors import ReportError
    from .merge import merge_reports
    from .merge import read_reports

    try:
        reports, names = read_reports(paths)
        merged = merge_reports(reports, slow_after=slow_after, names=names)
    except ReportError as err:
        print(f"Error: {err}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(render(merged, fmt))
    sys.stdout.flush()
    return EXIT_OK


def _main_merge(argv: Sequence[str], prog_name: str) -> int:
    try:
        options = _parse_merge(argv)
    except _Usage as err:
        usage = MERGE_USAGE.format(prog=prog_name)
        if not str(err):
            sys.stdout.write(usage)
            return EXIT_OK
        sys.stderr.write(f"{usage}\nError: {err}\n")
        return EXIT_USAGE
    return merge(
        options["paths"], fmt=options["format"], slow_after=options["slow_after"]
    )


def main(argv: Sequence[str] | None = None, prog_name: str | None = None) -> None:
    """Run the lean command line and exit with its code.

    :param prog_name: the command's name in its usage (default: ``flask-utd``
        as a console script, else ``python -m flask_utd``).
    """
    if prog_name is None:
        script = os.path.basename(sys.argv[0]) if sys.argv else ""
        prog_name = script if script == "flask-utd" else "python -m flask_utd"
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] == "merge":
        raise SystemExit(_main_merge(args[1:], prog_name))
    try:
        options = _parse(args)
    except _Usage as err:
        usage = USAGE.format(prog=prog_name)
        if not args or args[0] in ("-h", "--help"):
            usage += "\n" + MERGE_USAGE.format(prog=prog_name)
        if not str(err):
            sys.stdout.write(usage)
            raise SystemExit(EXIT_OK) from None
        sys.stderr.write(f"{usage}\nError: {err}\n")
        raise SystemExit(EXIT_USAGE) from None
    if options["socket_dir"]:
        dirs = [os.path.abspath(options["socket_dir"])]
    else:
        from .config import default_socket_dirs

        dirs = default_socket_dirs()
    raise SystemExit(
        dump(
            dirs,
            instance=options["instance"],
            pid=options["pid"],
            as_json=options["as_json"],
            timeout=options["timeout"],
            show_locals=options["show_locals"],
            slow_after=options["slow_after"],
            fmt=options["format"],
        )
    )
