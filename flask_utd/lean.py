"""``python -m flask_utd dump``: the lean command, without Flask, click or RPyC.

A dump is taken when the server is in trouble, so this command is built to start
fast: it imports only the standard library's cheapest modules, the collector and
:mod:`flask_utd.wire`. Its options, output and exit codes are those of
``flask utd dump`` (:mod:`flask_utd.cli`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from .collector import all_answered
from .collector import collect
from .collector import find_instance
from .config import default_socket_dirs
from .errors import InstanceNotFound
from .render import render_text

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_PARTIAL = 3


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"{value:g} is not in the range 0<x<=60")
    return value


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="flask-utd without Flask: talk to the agents' sockets directly.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    dump = commands.add_parser(
        "dump",
        help="Print a thread dump of every process of the running server.",
        description="Print a thread dump of every process of the running server.",
    )
    dump.add_argument(
        "--socket-dir",
        help="The server's UTD_SOCKET_DIR (default: the per-user directories).",
    )
    dump.add_argument(
        "--json", dest="as_json", action="store_true", help="Print the flask-utd/1 JSON report."
    )
    dump.add_argument("--pid", type=int, help="Only this process.")
    dump.add_argument(
        "--instance",
        help="The server instance (its master's pid), when several are running.",
    )
    dump.add_argument(
        "--timeout",
        type=_timeout,
        default=2.0,
        help="Each process's deadline in seconds (default: 2).",
    )
    return parser


def dump(
    socket_dirs: Sequence[str],
    *,
    instance: str | None = None,
    pid: int | None = None,
    as_json: bool = False,
    timeout: float = 2.0,
) -> int:
    """Collect the report of the one running instance, print it, return the exit code.

    :returns: 0 when every process answered, 2 on a usage error (said on
        stderr), 3 when some process did not answer.
    """
    try:
        socket_dir, found = find_instance(socket_dirs, instance)
    except InstanceNotFound as err:
        print(f"Error: {err}", file=sys.stderr)
        return EXIT_USAGE
    report = collect(socket_dir, found, timeout=timeout, pid=pid)
    if pid is not None and not report["processes"]:
        print(f"Error: no process {pid} in server instance {found}.", file=sys.stderr)
        return EXIT_USAGE
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(render_text(report))
    sys.stdout.flush()
    return EXIT_OK if all_answered(report) else EXIT_PARTIAL


def main(argv: Sequence[str] | None = None, prog_name: str = "python -m flask_utd") -> None:
    """Run the lean command line and exit with its code."""
    args = _parser(prog_name).parse_args(argv)
    if args.socket_dir:
        dirs = [os.path.abspath(args.socket_dir)]
    else:
        dirs = default_socket_dirs()
    raise SystemExit(
        dump(
            dirs,
            instance=args.instance,
            pid=args.pid,
            as_json=args.as_json,
            timeout=args.timeout,
        )
    )
