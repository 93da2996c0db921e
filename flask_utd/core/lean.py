"""``python -m flask_utd dump``: the lean command, without Flask, click or RPyC.

A dump is taken when the server is in trouble, so this command is built to start
fast: it imports only the standard library's cheapest modules (not even
:mod:`argparse`), the collector and
:mod:`flask_utd.wire`. Its options, output and exit codes are those of
``flask utd dump`` (:mod:`flask_utd.cli`).
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
from .collector import collect_samples
from .collector import find_instance
from .errors import EXIT_OK
from .errors import EXIT_PARTIAL
from .errors import EXIT_USAGE
from .errors import InstanceNotFound
from .render import render_text
from .report import Report
from .samples import DEFAULT_INTERVAL
from .samples import MAX_INTERVAL
from .samples import MAX_SAMPLES

USAGE = """\
Usage: {prog} dump [OPTIONS]

  Print a thread dump of every process of the running server.

Options:
  --socket-dir DIR     The server's UTD_SOCKET_DIR (default: the per-user
                       directories).
  --json               Print the flask-utd/1 JSON report.
  --pid PID            Only this process.
  --instance ID        The server instance (its master's pid), when several
                       are running.
  --timeout SECONDS    Each process's deadline in seconds, more than 0 and at
                       most 60 (default: 2).
  --locals             Show the locals of the innermost frames (the app must
                       set UTD_LOCALS).
  --slow-after SECONDS List requests older than this many seconds first, as
                       stuck (default: 5).
  --samples N          Take N dumps and say of every thread whether it moved
                       between them (default: 1, at most {max_samples}).
  --interval SECONDS   Seconds between samples (default: {interval:g}, at
                       most {max_interval:g}).
  --help               Show this message and exit.
"""


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
        "as_json": False,
        "pid": None,
        "instance": None,
        "timeout": 2.0,
        "show_locals": False,
        "slow_after": SLOW_AFTER,
        "samples": 1,
        "interval": DEFAULT_INTERVAL,
    }
    takes_value = {
        "--socket-dir",
        "--pid",
        "--instance",
        "--timeout",
        "--slow-after",
        "--samples",
        "--interval",
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
        elif name == "--instance":
            options["instance"] = value
        elif name == "--pid":
            try:
                options["pid"] = int(value)
            except ValueError:
                raise _Usage(
                    f"invalid value for --pid: {value!r} is not an integer."
                ) from None
        elif name == "--samples":
            if not value.isdigit() or not 1 <= int(value) <= MAX_SAMPLES:
                raise _Usage(
                    f"invalid value for --samples: {value!r} is not a whole number"
                    f" from 1 to {MAX_SAMPLES}."
                )
            options["samples"] = int(value)
        elif name == "--interval":
            try:
                interval = float(value)
            except ValueError:
                interval = float("nan")
            if not 0 < interval <= MAX_INTERVAL:
                raise _Usage(
                    f"invalid value for --interval: {value!r} is not a number of"
                    f" seconds more than 0 and at most {MAX_INTERVAL:g}."
                )
            options["interval"] = interval
        elif name == "--slow-after":
            try:
                slow = float(value)
            except ValueError:
                slow = float("nan")
            if not slow >= 0:
                raise _Usage(
                    f"invalid value for --slow-after: {value!r} is not a number of"
                    " seconds (0 or more)."
                )
            options["slow_after"] = slow
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


def collect_one(
    socket_dirs: Sequence[str],
    *,
    instance: str | None = None,
    pid: int | None = None,
    timeout: float = 2.0,
    show_locals: bool = False,
    slow_after: float = SLOW_AFTER,
    samples: int = 1,
    interval: float = DEFAULT_INTERVAL,
) -> Report:
    """The report of the one running instance (or of process ``pid`` in it).

    Shared by this command and ``flask utd dump``.

    :param samples: with more than 1, that many collections ``interval``
        seconds apart, merged (:func:`~flask_utd.core.collector.collect_samples`).
    :raises InstanceNotFound: no instance, several, or no process ``pid``.
    """
    socket_dir, found = find_instance(socket_dirs, instance)
    options = {"locals": True} if show_locals else None
    if samples > 1:
        report = collect_samples(
            socket_dir,
            found,
            samples=samples,
            interval=interval,
            timeout=timeout,
            pid=pid,
            options=options,
            slow_after=slow_after,
        )
    else:
        report = collect(
            socket_dir,
            found,
            timeout=timeout,
            pid=pid,
            options=options,
            slow_after=slow_after,
        )
    if pid is not None and not report["processes"]:
        raise InstanceNotFound(f"no process {pid} in server instance {found}.")
    return report


def report_text(report: Report, as_json: bool) -> str:
    """The report as the commands print it: JSON, or the readable dump."""
    return json.dumps(report, indent=2) + "\n" if as_json else render_text(report)


def exit_code(report: Report) -> int:
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
    samples: int = 1,
    interval: float = DEFAULT_INTERVAL,
) -> int:
    """Collect the report of the one running instance, print it, return the exit code.

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
            samples=samples,
            interval=interval,
        )
    except InstanceNotFound as err:
        print(f"Error: {err}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(report_text(report, as_json))
    sys.stdout.flush()
    return exit_code(report)


def main(argv: Sequence[str] | None = None, prog_name: str | None = None) -> None:
    """Run the lean command line and exit with its code.

    :param prog_name: the command's name in its usage (default: ``flask-utd``
        as a console script, else ``python -m flask_utd``).
    """
    if prog_name is None:
        script = os.path.basename(sys.argv[0]) if sys.argv else ""
        prog_name = script if script == "flask-utd" else "python -m flask_utd"
    try:
        options = _parse(sys.argv[1:] if argv is None else argv)
    except _Usage as err:
        usage = USAGE.format(
            prog=prog_name,
            max_samples=MAX_SAMPLES,
            interval=DEFAULT_INTERVAL,
            max_interval=MAX_INTERVAL,
        )
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
            samples=options["samples"],
            interval=options["interval"],
        )
    )
