"""The ``flask utd ...`` commands (click), thin wrappers around library functions.

The lean ``python -m flask_utd dump`` (:mod:`flask_utd.core.lean`) imports neither
Flask, click nor the app; ``flask utd dump`` reads the app's settings and does the
same through the same functions. Neither starts an agent nor talks HTTP: they
connect to the agents' sockets directly, so they work when every worker is stuck.

Every process of the server imports this module with ``utd_bp``, to register the
commands; what the commands run (the collector, the renderings, the signing) is
imported when a command runs (docs/performance.md).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
from typing import NoReturn

import click

from ..core import formats
from ..core.config import DEFAULTS
from ..core.config import MAX_TIMEOUT
from ..core.config import default_socket_dirs
from ..core.errors import EXIT_OK
from ..core.errors import EXIT_PARTIAL as EXIT_PARTIAL  # kept importable from here
from ..core.errors import EXIT_USAGE
from ..core.errors import InstanceNotFound
from ..core.errors import SocketDirError
from ..core.samples import DEFAULT_INTERVAL
from ..core.samples import MAX_INTERVAL
from ..core.samples import MAX_SAMPLES

if TYPE_CHECKING:
    from flask import Blueprint
    from flask import Flask


class UsageError(click.ClickException):
    """A usage or configuration error: exit code 2."""

    exit_code = EXIT_USAGE


def run_dump(
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
    :param show_locals: ask for the locals of the innermost frames (each
        process's app must allow them with ``UTD_LOCALS = True``).
    :param slow_after: requests older than this are marked as stuck.
    :param all_threads: show flask-utd's own threads in full.
    :param samples: take that many dumps ``interval`` seconds apart, and say of
        every thread whether it moved between them.
    :returns: 0 when every process answered, 3 when some did not.
    :raises UsageError: no instance (or several) found, no process ``pid``, or
        a socket directory this user may not read.
    """
    from ..core import lean

    try:
        report = lean.collect_one(
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
        raise UsageError(str(err)) from err
    click.echo(formats.render(report, format, all_threads=all_threads), nl=False)
    return lean.exit_code(report)


def run_merge(
    paths: Sequence[str],
    *,
    format: str = formats.DEFAULT,
    slow_after: float | None = None,
) -> int:
    """Merge the reports in ``paths`` (``-`` for standard input) and print the
    merged report in ``format`` (a name in
    :data:`~flask_utd.core.formats.FORMATS`).

    :raises UsageError: an input cannot be merged (not JSON, another schema,
        empty...), in one line.
    """
    from ..core.errors import ReportError
    from ..core.merge import merge_reports
    from ..core.merge import read_reports

    try:
        reports, names = read_reports(paths)
        merged = merge_reports(reports, slow_after=slow_after, names=names)
    except ReportError as err:
        raise UsageError(str(err)) from err
    click.echo(formats.render(merged, format), nl=False)
    return EXIT_OK


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
        "--socket-dir",
        type=click.Path(file_okay=False),
        help="The server's socket directory (default: UTD_SOCKET_DIR, else the"
        " per-user directories).",
    ),
    click.option(
        "--format",
        type=click.Choice(list(formats.FORMATS)),
        help=f"What to print (default: {formats.DEFAULT}).",
    ),
    click.option("--json", "as_json", is_flag=True, help="The same as --format json."),
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
        help="Mark requests older than this many seconds as stuck"
        " (default: UTD_SLOW_REQUEST).",
    ),
    click.option(
        "--all-threads",
        is_flag=True,
        help="Show the stacks of flask-utd's own threads too (one line each by"
        " default).",
    ),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True, max=MAX_TIMEOUT),
        help="Each process's deadline in seconds (default: UTD_TIMEOUT).",
    ),
    click.option(
        "--samples",
        type=click.IntRange(min=1, max=MAX_SAMPLES),
        default=1,
        show_default=True,
        help="Take N dumps and say of every thread whether it moved between them.",
    ),
    click.option(
        "--interval",
        type=click.FloatRange(min=0, min_open=True, max=MAX_INTERVAL),
        default=DEFAULT_INTERVAL,
        show_default=True,
        help="Seconds between samples.",
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
        socket_dir: str | None,
        format: str | None,
        as_json: bool,
        pid: int | None,
        instance: str | None,
        timeout: float | None,
        show_locals: bool,
        slow_after: float | None,
        all_threads: bool,
        samples: int,
        interval: float,
    ) -> None:
        """Print a thread dump of every process of the running server."""
        if as_json and format is not None:
            raise click.UsageError("--json is --format json: give one of them.")
        settings = current_app.extensions["utd"].settings
        if socket_dir is not None:
            dirs = [os.path.abspath(socket_dir)]
        elif current_app.config["UTD_SOCKET_DIR"] is None:
            dirs = default_socket_dirs()
        else:
            dirs = [settings.socket_dir]
        run_and_finish(
            lambda: run_dump(
                dirs,
                instance=instance,
                pid=pid,
                format="json" if as_json else format or formats.DEFAULT,
                timeout=timeout or settings.timeout,
                show_locals=show_locals,
                slow_after=(
                    settings.slow_request if slow_after is None else slow_after
                ),
                all_threads=all_threads,
                samples=samples,
                interval=interval,
            ),
            testing=current_app.testing,
        )

    @bp.cli.command("merge")
    @click.argument("reports", nargs=-1, required=True, metavar="REPORT...")
    @click.option(
        "--format",
        type=click.Choice(list(formats.FORMATS)),
        default=formats.DEFAULT,
        show_default=True,
    )
    @click.option(
        "--slow-after",
        type=click.FloatRange(min=0),
        help="List requests older than this many seconds first, as stuck"
        " (default: the reports' own).",
    )
    def merge_command(
        reports: tuple[str, ...], format: str, slow_after: float | None
    ) -> None:
        """Merge flask-utd/1 reports of several hosts or server instances.

        A REPORT is a file of one report or more (`dump --format json`), or -
        for standard input.
        """
        run_and_finish(
            lambda: run_merge(reports, format=format, slow_after=slow_after),
            testing=current_app.testing,
        )

    @bp.cli.command("url")
    @click.option(
        "--expires",
        type=float,
        help="Lifetime of the URL in seconds (default and maximum: UTD_URL_MAX_AGE).",
    )
    @click.option(
        "--base",
        metavar="URL",
        help="The server's address, e.g. https://app.example.com, for an absolute"
        " URL (default: the admin listener's, when UTD_ADMIN_LISTEN is set).",
    )
    def url_command(expires: float | None, base: str | None) -> None:
        """Print a signed URL of the thread dump page, valid for a few minutes."""
        app = current_app._get_current_object()  # type: ignore[attr-defined]

        def run() -> int:
            url = make_url(app, expires=expires, base=base)
            click.echo(url)
            where = app.extensions["utd"].settings.admin_listen
            if base is None and isinstance(where, str):
                click.echo(
                    f"The admin listener is on the Unix socket {where}: curl"
                    f" --unix-socket {where} 'http://localhost{url}'",
                    err=True,
                )
            return EXIT_OK

        run_and_finish(run, testing=current_app.testing)


def make_url(
    app: Flask, *, expires: float | None = None, base: str | None = None
) -> str:
    """A signed URL of the app's ``GET /_utd/dump``, valid for ``expires`` seconds.

    :param expires: the lifetime in seconds (default and maximum:
        ``UTD_URL_MAX_AGE``).
    :param base: the server's address (``https://host``); without it, the admin
        listener's (``UTD_ADMIN_LISTEN`` at a host and port: ``http://host:port``,
        this machine's name for a wildcard address), else the path and query
        only.
    :raises UsageError: ``expires`` is out of range.
    """
    settings = app.extensions["utd"].settings
    if expires is None:
        expires = settings.url_max_age
    if not 0 < expires <= settings.url_max_age:
        raise UsageError(
            f"--expires must be more than 0 and at most UTD_URL_MAX_AGE"
            f" ({settings.url_max_age:g} s), not {expires:g}: the endpoint accepts"
            " no token older than that. Raise UTD_URL_MAX_AGE to allow longer."
        )
    from .signing import make_token

    token = make_token(settings.secret_key, expires)
    # Built without a request: the route's path wherever the blueprint was put.
    path = app.url_map.bind("localhost").build("utd.dump", {"token": token})
    if base is None and isinstance(settings.admin_listen, tuple):
        base = admin_base(*settings.admin_listen)
    if base:
        return base.rstrip("/") + path
    return path


def admin_base(host: str, port: int) -> str:
    """``http://host:port`` of an admin listener on a host and port: a wildcard
    address (``0.0.0.0``, ``::``) is this machine's name, an IPv6 address in
    brackets."""
    if host in ("", "0.0.0.0", "::"):
        import socket

        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
