"""``python -m flask_utd dump``: the lean command, without Flask, click or RPyC.

A dump is taken when the server is in trouble, so this command is built to start
fast: it imports the standard library, the collector and the client side of the
wire (:mod:`flask_utd.core.wire`), and Jinja only for ``--format html``. Its
options, output and exit codes are those of ``flask utd dump``
(:mod:`flask_utd.ext.cli`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import formats
from .collector import all_answered
from .collector import collect
from .collector import collect_samples
from .collector import find_instance
from .config import DEFAULTS
from .config import MAX_TIMEOUT
from .config import default_socket_dirs
from .errors import EXIT_OK
from .errors import EXIT_PARTIAL
from .errors import EXIT_USAGE
from .errors import InstanceNotFound
from .errors import SocketDirError
from .report import Report
from .samples import DEFAULT_INTERVAL
from .samples import MAX_INTERVAL
from .samples import MAX_SAMPLES


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("nan")  # fails every range check below


def _timeout(value: str) -> float:
    seconds = _seconds(value)
    if not 0 < seconds <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number more than 0 and at most {MAX_TIMEOUT}"
        )
    return seconds


def _slow_after(value: str) -> float:
    seconds = _seconds(value)
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of seconds (0 or more)"
        )
    return seconds


def _samples(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= MAX_SAMPLES:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a whole number from 1 to {MAX_SAMPLES}"
        )
    return int(value)


def _interval(value: str) -> float:
    seconds = _seconds(value)
    if not 0 < seconds <= MAX_INTERVAL:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of seconds more than 0 and at most"
            f" {MAX_INTERVAL:g}"
        )
    return seconds


def make_parser(prog: str) -> argparse.ArgumentParser:
    """The command line: the ``dump`` command and its options.

    :param prog: the command's name in its usage.
    """
    parser = argparse.ArgumentParser(
        prog=prog, description="Thread dumps of a running flask-utd server."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    dump = commands.add_parser(
        "dump",
        help="print a thread dump of every process of the running server",
        description="Print a thread dump of every process of the running server.",
    )
    dump.add_argument(
        "--socket-dir",
        metavar="DIR",
        help="the server's UTD_SOCKET_DIR (default: the per-user directories)",
    )
    output = dump.add_mutually_exclusive_group()
    output.add_argument(
        "--format",
        choices=list(formats.FORMATS),
        default=formats.DEFAULT,
        help="what to print: %(choices)s (default: %(default)s)",
    )
    output.add_argument(
        "--json",
        dest="format",
        action="store_const",
        const="json",
        help="the same as --format json",
    )
    dump.add_argument("--pid", type=int, help="only this process")
    dump.add_argument(
        "--instance",
        metavar="ID",
        help="the server instance (its master's pid), when several are running",
    )
    dump.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_timeout,
        default=DEFAULTS["UTD_TIMEOUT"],
        help="each process's deadline in seconds, more than 0 and at most"
        f" {MAX_TIMEOUT} (default: %(default)g)",
    )
    dump.add_argument(
        "--locals",
        dest="show_locals",
        action="store_true",
        help="show the locals of the innermost frames (the app must set UTD_LOCALS)",
    )
    dump.add_argument(
        "--all-threads",
        action="store_true",
        help="show the stacks of flask-utd's own threads too (the text shows"
        " one line for each by default)",
    )
    dump.add_argument(
        "--slow-after",
        metavar="SECONDS",
        type=_slow_after,
        default=DEFAULTS["UTD_SLOW_REQUEST"],
        help="mark requests older than this many seconds as stuck"
        " (default: %(default)g)",
    )
    dump.add_argument(
        "--samples",
        metavar="N",
        type=_samples,
        default=1,
        help="take N dumps and say of every thread whether it moved between them"
        f" (default: %(default)s, at most {MAX_SAMPLES})",
    )
    dump.add_argument(
        "--interval",
        metavar="SECONDS",
        type=_interval,
        default=DEFAULT_INTERVAL,
        help="seconds between samples (default: %(default)g, at most"
        f" {MAX_INTERVAL:g})",
    )
    merge = commands.add_parser(
        "merge",
        help="merge the reports of several hosts or server instances into one",
        description="Merge the flask-utd/1 reports of several hosts or server"
        " instances into one: stuck requests across all of them first, identical"
        " stacks grouped across hosts.",
    )
    merge.add_argument(
        "paths",
        metavar="REPORT",
        nargs="+",
        help="a file of one report or more (`dump --format json`), or - for"
        " standard input",
    )
    merge.add_argument(
        "--format",
        choices=list(formats.FORMATS),
        default=formats.DEFAULT,
        help="what to print: %(choices)s (default: %(default)s)",
    )
    merge.add_argument(
        "--slow-after",
        metavar="SECONDS",
        type=_slow_after,
        default=None,
        help="list requests older than this many seconds first, as stuck"
        " (default: the smallest of the reports' own)",
    )
    return parser


def collect_one(
    socket_dirs: Sequence[str],
    *,
    instance: str | None = None,
    pid: int | None = None,
    timeout: float = DEFAULTS["UTD_TIMEOUT"],
    show_locals: bool = False,
    slow_after: float = DEFAULTS["UTD_SLOW_REQUEST"],
    samples: int = 1,
    interval: float = DEFAULT_INTERVAL,
) -> Report:
    """The report of the one running instance (or of process ``pid`` in it).

    Shared by this command and ``flask utd dump``.

    :param samples: with more than 1, that many collections ``interval``
        seconds apart, merged (:func:`~flask_utd.core.collector.collect_samples`).
    :raises InstanceNotFound: no instance, several, or no process ``pid``.
    :raises SocketDirError: this user may not read the socket directory.
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


def exit_code(report: Report) -> int:
    """0 when every process answered, 3 when some did not."""
    return EXIT_OK if all_answered(report) else EXIT_PARTIAL


def dump(
    socket_dirs: Sequence[str],
    *,
    instance: str | None = None,
    pid: int | None = None,
    format: str = formats.DEFAULT,
    timeout: float = DEFAULTS["UTD_TIMEOUT"],
    show_locals: bool = False,
    slow_after: float = DEFAULTS["UTD_SLOW_REQUEST"],
    all_threads: bool = False,
    samples: int = 1,
    interval: float = DEFAULT_INTERVAL,
) -> int:
    """Collect the report of the one running instance, print it, return the exit code.

    :param format: a name in :data:`~flask_utd.core.formats.FORMATS`.
    :param all_threads: show flask-utd's own threads in full.
    :returns: 0 when every process answered, 2 on a usage error or a socket
        directory this user may not read (said on stderr), 3 when some process
        did not answer.
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
    except (InstanceNotFound, SocketDirError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(formats.render(report, format, all_threads=all_threads))
    sys.stdout.flush()
    return exit_code(report)


def merge(
    paths: Sequence[str],
    *,
    format: str = formats.DEFAULT,
    slow_after: float | None = None,
) -> int:
    """Merge the reports in ``paths`` (``-`` for standard input), print the
    merged report, return the exit code.

    :param format: a name in :data:`~flask_utd.core.formats.FORMATS`.
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
    sys.stdout.write(formats.render(merged, format))
    sys.stdout.flush()
    return EXIT_OK


def main(argv: Sequence[str] | None = None, prog_name: str | None = None) -> None:
    """Run the lean command line and exit with its code.

    :param prog_name: the command's name in its usage (default: ``flask-utd``
        as a console script, else ``python -m flask_utd``).
    """
    if prog_name is None:
        script = os.path.basename(sys.argv[0]) if sys.argv else ""
        prog_name = script if script == "flask-utd" else "python -m flask_utd"
    options = make_parser(prog_name).parse_args(argv)
    if options.command == "merge":
        raise SystemExit(
            merge(options.paths, format=options.format, slow_after=options.slow_after)
        )
    if options.socket_dir:
        dirs = [os.path.abspath(options.socket_dir)]
    else:
        dirs = default_socket_dirs()
    raise SystemExit(
        dump(
            dirs,
            instance=options.instance,
            pid=options.pid,
            format=options.format,
            timeout=options.timeout,
            show_locals=options.show_locals,
            slow_after=options.slow_after,
            all_threads=options.all_threads,
            samples=options.samples,
            interval=options.interval,
        )
    )
