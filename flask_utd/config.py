"""The ``UTD_*`` settings: defaults, validation, and the resolved values.

Defaults are set once with ``app.config.setdefault`` when the app is set up, and
every value is checked there, so that a bad value fails at start-up with a message
that names the key.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

#: Every setting flask-utd reads, with its default.
DEFAULTS: dict[str, Any] = {
    "UTD_SOCKET_DIR": None,
    "UTD_TIMEOUT": 2.0,
    # SIGRTMIN + 5: neither uWSGI nor gunicorn uses real-time signals, and
    # glibc keeps the two below SIGRTMIN for itself. ``None`` turns it off.
    "UTD_FAULTHANDLER_SIGNAL_OFFSET": 5,
}


@dataclass(frozen=True)
class Settings:
    """The validated settings of one app, kept in ``app.extensions["utd"]``."""

    #: Directory that holds one sub-directory per server instance.
    socket_dir: str
    #: The collector's deadline for each process, in seconds.
    timeout: float
    #: The signal on which every process registers :mod:`faulthandler`, or ``None``.
    fault_signal: int | None = None


def default_socket_dirs() -> list[str]:
    """The directories used when ``UTD_SOCKET_DIR`` is not set, preferred first.

    ``$XDG_RUNTIME_DIR/flask-utd`` where that variable names a directory, then
    ``<tmp>/flask-utd-<uid>``, after the ``UTD_SOCKET_DIR`` environment variable
    if it is set. A server run by systemd often has no
    ``XDG_RUNTIME_DIR`` while a login shell has one, so readers look in both.
    """
    dirs = []
    from_env = os.environ.get("UTD_SOCKET_DIR")
    if from_env:
        # The gunicorn hooks and the lean CLI have no app config to read.
        dirs.append(os.path.abspath(from_env))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        dirs.append(os.path.join(runtime, "flask-utd"))
    dirs.append(os.path.join(tempfile.gettempdir(), f"flask-utd-{os.geteuid()}"))
    return dirs


def load_settings(config: dict[str, Any]) -> Settings:
    """Set the defaults in ``config``, check every value, and return them resolved.

    :param config: the app's config (``app.config``).
    :raises ConfigError: a value has the wrong type or range; the message names the key.
    """
    for key, value in DEFAULTS.items():
        config.setdefault(key, value)

    socket_dir = config["UTD_SOCKET_DIR"]
    if socket_dir is None:
        socket_dir = default_socket_dirs()[0]
    elif not isinstance(socket_dir, (str, os.PathLike)) or not os.fspath(socket_dir):
        raise ConfigError(
            f"UTD_SOCKET_DIR must be a directory path (a str), not {socket_dir!r};"
            " leave it unset to use a private per-user directory."
        )
    socket_dir = os.path.abspath(os.fspath(socket_dir))

    timeout = config["UTD_TIMEOUT"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ConfigError(
            f"UTD_TIMEOUT must be a number of seconds, not {timeout!r}; e.g. 2.0."
        )
    if not 0 < timeout <= 60:
        raise ConfigError(
            f"UTD_TIMEOUT must be more than 0 and at most 60 seconds, not {timeout!r}."
        )

    offset = config["UTD_FAULTHANDLER_SIGNAL_OFFSET"]
    fault_signal = None
    if offset is not None and offset is not False:
        from .faultdump import max_offset
        from .faultdump import signal_for

        if isinstance(offset, bool) or not isinstance(offset, int):
            raise ConfigError(
                "UTD_FAULTHANDLER_SIGNAL_OFFSET must be an int k (faulthandler"
                f" listens on SIGRTMIN+k) or None to turn it off, not {offset!r}."
            )
        if not 0 <= offset <= max_offset():
            raise ConfigError(
                f"UTD_FAULTHANDLER_SIGNAL_OFFSET must be between 0 and {max_offset()}"
                f" (SIGRTMIN+k must be a real-time signal), not {offset!r}."
            )
        fault_signal = signal_for(offset)
    return Settings(
        socket_dir=socket_dir, timeout=float(timeout), fault_signal=fault_signal
    )
