"""The errors flask-utd raises. Every message says what happened and what to do."""

from __future__ import annotations

#: Exit codes of ``flask utd dump`` and ``python -m flask_utd dump`` that scripts
#: can rely on: every process answered, a usage or configuration error, some
#: process did not answer.
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_PARTIAL = 3


class UTDError(Exception):
    """Base class of every error raised by flask-utd."""


class ConfigError(UTDError):
    """A ``UTD_*`` setting has a value that cannot work. The message names the key."""


class SetupError(UTDError, RuntimeError):
    """flask-utd is set up twice on one app."""


class SocketDirError(UTDError):
    """The socket directory is missing, not private, or not owned by this user."""


class InstanceNotFound(UTDError):
    """No running server instance (or not exactly one) was found in the socket
    directory."""


class ReportError(UTDError):
    """A report given to ``merge`` cannot be read, or is not a ``flask-utd/1``
    report. The message names the file."""
