"""Start-up configuration errors in the server's log: one line, and the app still
does not load.

A ``UTD_*`` value that cannot work, or no key to sign URLs, raises
:class:`~flask_utd.ConfigError` while the server imports the app, so that the
operator notices at once. Left to themselves, uWSGI and gunicorn print it as a
traceback of some 30 lines, most of them Flask's and flask-utd's, with the one
line that matters at the bottom. Here each server prints that line alone:

uWSGI
    prints a failed import with ``PyErr_Print``, which calls
    :data:`sys.excepthook`: a hook prints the error as one line, and leaves every
    other exception to the hook it replaced. uWSGI then says "unable to load app"
    and, with ``need-app`` (which the shipped uwsgi.ini sets), stops.
gunicorn
    prints an ``AppImportError`` raised while a worker loads the app as one line,
    and then stops the arbiter ("App failed to load"): the error raised there is
    also one of those. With ``--preload`` the arbiter imports the app and the
    error reaches the top of the process: the hook prints it.

Anywhere else (``flask run``, a test, a script) the error is raised as it is.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from ..core.errors import ConfigError
from . import uwsgi as uwsgi_server

#: How the line starts.
PREFIX = "flask-utd: configuration error, the app is not loaded: "


def one_line(err: BaseException) -> str:
    """The line a server's log shows for the start-up error ``err``."""
    text = " ".join(str(err).split())
    return text if text.startswith(PREFIX) else PREFIX + text


def startup_error(err: ConfigError) -> ConfigError:
    """What to raise for ``err``, raised while the app is set up, so that this
    process's server prints it as one line (see the module's docstring).

    :returns: ``err`` itself, or under gunicorn a :class:`ConfigError` that is
        also gunicorn's ``AppImportError``, its message the line.
    """
    # gunicorn's arbiter imports its errors module; a process it forked has it.
    gunicorn_errors = sys.modules.get("gunicorn.errors")
    if uwsgi_server.uwsgi_module() is None and gunicorn_errors is None:
        return err
    _install_hook()
    app_import_error = getattr(gunicorn_errors, "AppImportError", None)
    if isinstance(app_import_error, type) and issubclass(app_import_error, Exception):
        kind: Any = type("ConfigError", (ConfigError, app_import_error), {})
        found: ConfigError = kind(one_line(err))
        return found
    return err


def _one_line_hook(
    kind: type[BaseException],
    value: BaseException,
    traceback: TracebackType | None,
) -> None:
    if isinstance(value, ConfigError):
        print(one_line(value), file=sys.stderr, flush=True)
        return
    _previous[0](kind, value, traceback)


_previous = [sys.excepthook]


def _install_hook() -> None:
    if sys.excepthook is not _one_line_hook:
        _previous[0] = sys.excepthook
        sys.excepthook = _one_line_hook
