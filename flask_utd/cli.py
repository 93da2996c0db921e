"""The command line: ``flask utd dump`` and the lean ``python -m flask_utd dump``.

The lean command imports neither Flask nor the app; ``flask utd dump`` reads the
app's settings and does the same. Neither starts an agent nor talks HTTP: they
connect to the agents' sockets directly, so they work when every worker is stuck.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
from typing import NoReturn

import click

from .collector import all_answered
from .collector import collect
from .collector import find_instance
from .config import DEFAULTS
from .config import default_socket_dirs
from .errors import InstanceNotFound
from .render import render_text

if TYPE_CHECKING:
    from flask import Blueprint

#: Exit codes that scripts can rely on.
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_PARTIAL = 3


class UsageError(click.ClickException):
    """A usage or configuration error: exit code 2."""

    exit_code = EXIT_USAGE


def run_dump(
    socket_dirs: Sequence[str],
    *,
    instance: str | None = None,
    pid: int | None = None,
    as_json: bool = False,
    timeout: float = 2.0,
    show_locals: bool = False,
    slow_after: float = 5.0,
) -> int:
    """Collect the report of the one running instance, print it, return the exit code.

    :param show_locals: ask for the locals of the innermost frames (each
        process's app must allow them with ``UTD_LOCALS = True``).
    :param slow_after: requests older than this are listed first, as stuck.
    :returns: 0 when every process answered, 3 when some did not.
    :raises UsageError: no instance (or several) found, or no process ``pid``.
    """
    try:
        socket_dir, found = find_instance(socket_dirs, instance)
    except InstanceNotFound as err:
        raise UsageError(str(err)) from err
    options = {"locals": True} if show_locals else None
    report = collect(
        socket_dir,
        found,
        timeout=timeout,
        pid=pid,
        options=options,
        slow_after=slow_after,
    )
    if pid is not None and not report["processes"]:
        raise UsageError(f"no process {pid} in server instance {found}.")
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render_text(report), nl=False)
    return EXIT_OK if all_answered(report) else EXIT_PARTIAL


def run_and_finish(run: Callable[[], int], *, testing: bool = False) -> NoReturn:
    """Run a command's body and end the process with its exit code, promptly,
    errors included (see :func:`finish`)."""
    try:
        code = run()
    except click.ClickException as err:
        if testing:
            raise
        err.show()
        code = err.exit_code
    finish(code, testing=testing)


def finish(code: int, *, testing: bool = False) -> NoReturn:
    """End the command with ``code``, promptly.

    Importing the app may have started non-daemon threads (the demo app does), and
    Python would wait for them forever at exit. Those threads are the app's, not
    this command's: after flushing the output, end the process without waiting,
    except under a test runner (``testing``), which runs commands in-process.
    """
    leftover = [
        t
        for t in threading.enumerate()
        if not t.daemon and t is not threading.main_thread() and t.is_alive()
    ]
    if leftover and not testing:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


_dump_options = [
    click.option(
        "--json", "as_json", is_flag=True, help="Print the flask-utd/1 JSON report."
    ),
    click.option("--pid", type=int, help="Only this process."),
    click.option(
        "--instance",
        help="The server instance (its master's pid), when several are running.",
    ),
    click.option(
        "--locals",
        "show_locals",
        is_flag=True,
        help="Show the locals of the innermost frames (the app must set UTD_LOCALS).",
    ),
    click.option(
        "--slow-after",
        type=click.FloatRange(min=0),
        help="List requests older than this many seconds first, as stuck"
        " (default: UTD_SLOW_REQUEST).",
    ),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True, max=60),
        help="Each process's deadline in seconds (default: UTD_TIMEOUT).",
    ),
]


def _with_dump_options(f: Any) -> Any:
    for option in reversed(_dump_options):
        f = option(f)
    return f


def register(bp: Blueprint) -> None:
    """Add the ``flask utd ...`` commands to the blueprint's CLI group."""
    from flask import current_app

    @bp.cli.command("dump")
    @_with_dump_options
    def dump_command(
        as_json: bool,
        pid: int | None,
        instance: str | None,
        timeout: float | None,
        show_locals: bool,
        slow_after: float | None,
    ) -> None:
        """Print a thread dump of every process of the running server."""
        settings = current_app.extensions["utd"].settings
        if current_app.config["UTD_SOCKET_DIR"] is None:
            dirs = default_socket_dirs()
        else:
            dirs = [settings.socket_dir]
        run_and_finish(
            lambda: run_dump(
                dirs,
                instance=instance,
                pid=pid,
                as_json=as_json,
                timeout=timeout or settings.timeout,
                show_locals=show_locals,
                slow_after=(
                    settings.slow_request if slow_after is None else slow_after
                ),
            ),
            testing=current_app.testing,
        )


@click.group()
def main() -> None:
    """flask-utd without Flask: talk to the agents' sockets directly."""


@main.command("dump")
@click.option(
    "--socket-dir",
    type=click.Path(file_okay=False),
    help="The server's UTD_SOCKET_DIR (default: the per-user directories).",
)
@_with_dump_options
def lean_dump(
    socket_dir: str | None,
    as_json: bool,
    pid: int | None,
    instance: str | None,
    timeout: float | None,
    show_locals: bool,
    slow_after: float | None,
) -> None:
    """Print a thread dump of every process of the running server."""
    dirs = [os.path.abspath(socket_dir)] if socket_dir else default_socket_dirs()
    code = run_dump(
        dirs,
        instance=instance,
        pid=pid,
        as_json=as_json,
        timeout=timeout or 2.0,
        show_locals=show_locals,
        slow_after=DEFAULTS["UTD_SLOW_REQUEST"] if slow_after is None else slow_after,
    )
    raise SystemExit(code)
