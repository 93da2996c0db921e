"""The ``UTD_*`` settings: defaults, validation, and the resolved values.

One rule for where a setting comes from: the app's config, else the environment
variable of the same name, else the default. Defaults (and values from the
environment) are set once with ``app.config.setdefault`` when the app is set up,
and every value is checked there, so that a bad value fails at start-up with a
message that names the key. A process with no app (gunicorn's arbiter without
``--preload``) reads the same environment, so it and the app agree on the key
that signs dump URLs and on the addresses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from .errors import ConfigError

#: Every setting flask-utd reads, with its default.
DEFAULTS: dict[str, Any] = {
    "UTD_SOCKET_DIR": None,
    "UTD_TIMEOUT": 2.0,
    "UTD_SECRET_KEY": None,
    "UTD_URL_MAX_AGE": 300,
    "UTD_ADMIN_LISTEN": None,
    # SIGRTMIN + 5: neither uWSGI nor gunicorn uses real-time signals, and
    # glibc keeps the two below SIGRTMIN for itself. ``None`` turns it off.
    "UTD_FAULTHANDLER_SIGNAL_OFFSET": 5,
    "UTD_CAPTURE_QUERY": False,
    "UTD_SLOW_REQUEST": 5.0,
    "UTD_LOCALS": False,
    "UTD_LOCALS_FRAMES": 3,
    "UTD_LOCALS_REPR": "builtin",
    "UTD_LOCALS_BUDGET": 0.5,
    # "auto": derived from the server's kill timer (watchdog_threshold).
    "UTD_WATCHDOG": "auto",
    "UTD_WATCHDOG_FORMAT": "text",
}

#: Settings whose value in the environment is taken as it is written; the
#: others are read as JSON there (``2.5``, ``true``, ``null``).
TEXT_KEYS = frozenset(
    {
        "UTD_SOCKET_DIR",
        "UTD_SECRET_KEY",
        "UTD_ADMIN_LISTEN",
        "UTD_LOCALS_REPR",
        "UTD_WATCHDOG_FORMAT",
    }
)
#: Settings whose value may also be this word, taken as written from the
#: environment (``UTD_WATCHDOG=auto``); any other value is read as JSON.
WORD_VALUES = {"UTD_WATCHDOG": "auto"}

#: The ways locals may be shown (``UTD_LOCALS_REPR``): ``"builtin"`` calls no
#: object's own ``__repr__``; ``"all"`` does, in a helper thread, within the budget.
LOCALS_REPRS = ("builtin", "all")
#: Most frames per thread whose locals a dump may show.
MAX_LOCALS_FRAMES = 20
#: The longest deadline per process, in seconds (``UTD_TIMEOUT``, ``--timeout``).
MAX_TIMEOUT = 60
#: The forms of the watchdog's log records (``UTD_WATCHDOG_FORMAT``): one
#: readable block, or one JSON object per line.
WATCHDOG_FORMATS = ("text", "json")
#: The share of the server's kill timer (uWSGI's ``harakiri``, gunicorn's
#: ``timeout``) that ``UTD_WATCHDOG = "auto"`` waits: the watchdog looks every
#: half threshold, so it sees a stuck request by 1.5 x 0.6 = 90 % of the kill
#: timer, before the kill.
WATCHDOG_SHARE = 0.6


@dataclass(frozen=True)
class Settings:
    """The validated settings of one app, kept in ``app.extensions["utd"]``.

    Made by :func:`load_settings` only; the defaults are :data:`DEFAULTS`.
    """

    #: Directory that holds one sub-directory per server instance.
    socket_dir: str
    #: The collector's deadline for each process, in seconds.
    timeout: float
    #: The key that signs dump URLs: ``UTD_SECRET_KEY`` (the app's config, else
    #: the environment), else ``SECRET_KEY``.
    secret_key: str | bytes = field(repr=False)
    #: The signal on which every process registers :mod:`faulthandler`, or ``None``.
    fault_signal: int | None
    #: Whether the request context keeps the query string of the path.
    capture_query: bool
    #: Requests older than this many seconds are listed first, as stuck.
    slow_request: float
    #: Whether a dump may show the locals of frames (asked per dump).
    locals: bool
    #: How many innermost frames per thread show their locals.
    locals_frames: int
    #: ``"builtin"`` or ``"all"``: see :data:`LOCALS_REPRS`.
    locals_repr: str
    #: Seconds a dump may spend on locals, all threads together.
    locals_budget: float
    #: The longest a signed dump URL is valid, in seconds.
    url_max_age: float
    #: Where the uWSGI master serves ``/_utd/``: ``(host, port)`` or a Unix
    #: socket path; ``None`` for no admin listener.
    admin_listen: tuple[str, int] | str | None
    #: ``UTD_WATCHDOG``: seconds, ``"auto"`` (resolved where the agent starts,
    #: see :func:`watchdog_threshold`) or ``None`` for no watchdog.
    watchdog: float | str | None
    #: ``"text"`` or ``"json"``: see :data:`WATCHDOG_FORMATS`.
    watchdog_format: str


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
    import tempfile  # only here: the lean command may not need it

    dirs.append(os.path.join(tempfile.gettempdir(), f"flask-utd-{os.geteuid()}"))
    return dirs


def from_environment(
    config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The ``UTD_*`` settings that ``config`` does not set and the environment
    does (an empty variable counts as unset).

    Text settings (:data:`TEXT_KEYS`) are taken as written; the others are read as
    JSON, as Flask's ``from_prefixed_env`` reads values: ``UTD_TIMEOUT=2.5``,
    ``UTD_LOCALS=true``, ``UTD_FAULTHANDLER_SIGNAL_OFFSET=null``.

    :param environ: the environment (default: :data:`os.environ`).
    :raises ConfigError: a variable is not JSON; the message names it.
    """
    if environ is None:
        environ = os.environ
    found: dict[str, Any] = {}
    for key in DEFAULTS:
        raw = environ.get(key)
        if key in config or not raw:
            continue
        if key in TEXT_KEYS or WORD_VALUES.get(key) == raw.strip():
            found[key] = raw.strip() if key in WORD_VALUES else raw
            continue
        try:
            found[key] = json.loads(raw)
        except ValueError as err:
            raise ConfigError(
                f"the environment variable {key}={raw!r} cannot be read: write"
                " its value as JSON (a number such as 2.5, true, false or null),"
                " or set it in the app's config instead."
            ) from err
    return found


def load_settings(config: dict[str, Any], *, need_secret: bool = True) -> Settings:
    """Complete ``config`` from the environment and the defaults, check every
    value, and return them resolved.

    A setting that ``config`` does not have is read from the environment variable
    of the same name (:func:`from_environment`), else it gets its default; either
    way it is then set in ``config`` (``app.config.setdefault``).

    :param config: the app's config (``app.config``).
    :param need_secret: whether a signing key is required (``False`` only for a
        process with no app, such as gunicorn's arbiter without ``--preload``,
        which serves no dump URL).
    :raises ConfigError: a value has the wrong type or range; the message names the key.
    """
    environment = from_environment(config)
    for key, value in environment.items():
        config.setdefault(key, value)
    for key, value in DEFAULTS.items():
        config.setdefault(key, value)
    try:
        return _resolve(config, need_secret)
    except ConfigError as err:
        named = [key for key in environment if str(err).startswith(f"{key} ")]
        if not named:
            raise
        raise ConfigError(
            f"{err} ({named[0]} is set in the environment, not in the app's config.)"
        ) from err


def _resolve(config: dict[str, Any], need_secret: bool) -> Settings:
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
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ConfigError(
            f"UTD_TIMEOUT must be more than 0 and at most {MAX_TIMEOUT} seconds,"
            f" not {timeout!r}."
        )
    for key in ("UTD_CAPTURE_QUERY", "UTD_LOCALS"):
        if not isinstance(config[key], bool):
            raise ConfigError(f"{key} must be True or False, not {config[key]!r}.")

    slow = config["UTD_SLOW_REQUEST"]
    if isinstance(slow, bool) or not isinstance(slow, (int, float)) or slow < 0:
        raise ConfigError(
            f"UTD_SLOW_REQUEST must be a number of seconds (0 or more), not {slow!r};"
            " e.g. 5.0. Requests older than that are listed first in a dump."
        )

    frames = config["UTD_LOCALS_FRAMES"]
    if (
        isinstance(frames, bool)
        or not isinstance(frames, int)
        or not 1 <= frames <= MAX_LOCALS_FRAMES
    ):
        raise ConfigError(
            f"UTD_LOCALS_FRAMES must be a whole number from 1 to {MAX_LOCALS_FRAMES},"
            f" not {frames!r}; e.g. 3."
        )

    reprs = config["UTD_LOCALS_REPR"]
    if reprs not in LOCALS_REPRS:
        raise ConfigError(
            f"UTD_LOCALS_REPR must be 'builtin' (show values of builtin types only)"
            f" or 'all' (call every object's __repr__), not {reprs!r}."
        )

    budget = config["UTD_LOCALS_BUDGET"]
    if (
        isinstance(budget, bool)
        or not isinstance(budget, (int, float))
        or not 0 < budget < timeout
    ):
        raise ConfigError(
            f"UTD_LOCALS_BUDGET must be a number of seconds above 0 and below"
            f" UTD_TIMEOUT ({timeout!r}), not {budget!r}; e.g. 0.5."
        )

    watchdog = config["UTD_WATCHDOG"]
    if watchdog is not None and watchdog != "auto":
        if (
            isinstance(watchdog, bool)
            or not isinstance(watchdog, (int, float))
            or not 0 < watchdog < float("inf")
        ):
            raise ConfigError(
                f'UTD_WATCHDOG must be a number of seconds above 0, "auto" (derived'
                f" from the server's harakiri or timeout) or None (no watchdog), not"
                f" {watchdog!r}."
            )
        watchdog = float(watchdog)
    watchdog_format = config["UTD_WATCHDOG_FORMAT"]
    if watchdog_format not in WATCHDOG_FORMATS:
        raise ConfigError(
            "UTD_WATCHDOG_FORMAT must be 'text' (one readable block per record) or"
            f" 'json' (one JSON object per line), not {watchdog_format!r}."
        )

    offset = config["UTD_FAULTHANDLER_SIGNAL_OFFSET"]
    fault_signal = None
    if offset is not None and offset is not False:
        from .fallback import max_offset
        from .fallback import signal_for

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
        socket_dir=socket_dir,
        timeout=float(timeout),
        capture_query=config["UTD_CAPTURE_QUERY"],
        slow_request=float(slow),
        locals=config["UTD_LOCALS"],
        locals_frames=frames,
        locals_repr=reprs,
        locals_budget=float(budget),
        secret_key=_secret_key(config, need_secret),
        url_max_age=_url_max_age(config["UTD_URL_MAX_AGE"]),
        admin_listen=parse_listen(config["UTD_ADMIN_LISTEN"]),
        fault_signal=fault_signal,
        watchdog=watchdog,
        watchdog_format=watchdog_format,
    )


def watchdog_threshold(
    setting: float | str | None, kill_after: float | None, slow_request: float
) -> float | None:
    """The watchdog's threshold in seconds, or ``None`` for no watchdog.

    A number is taken as it is. ``"auto"`` is :data:`WATCHDOG_SHARE` (60 %) of
    the server's kill timer where one is set (uWSGI's ``harakiri``, gunicorn's
    ``timeout``), else ``UTD_SLOW_REQUEST`` (no watchdog if that is 0).

    :param setting: ``UTD_WATCHDOG``.
    :param kill_after: the server's kill timer in seconds; ``None`` or 0 for none.
    :param slow_request: ``UTD_SLOW_REQUEST``.
    """
    if setting != "auto":
        return None if setting is None else float(setting)
    if kill_after:
        return round(kill_after * WATCHDOG_SHARE, 3)
    return slow_request or None


def _secret_key(config: dict[str, Any], needed: bool) -> str | bytes:
    for key in ("UTD_SECRET_KEY", "SECRET_KEY"):
        value = config.get(key)
        if value is None:
            continue
        if not isinstance(value, (str, bytes)) or not value:
            raise ConfigError(
                f"{key} must be a non-empty str or bytes to sign dump URLs, not a"
                f" {type(value).__name__}; e.g. the output of"
                " `python -c 'import secrets; print(secrets.token_hex())'`."
            )
        return value
    if not needed:
        return ""
    raise ConfigError(
        "flask-utd needs a key to sign dump URLs (GET /_utd/dump) and neither"
        " UTD_SECRET_KEY nor SECRET_KEY is set; set one of them, e.g. to the output"
        " of `python -c 'import secrets; print(secrets.token_hex())'`."
    )


def _url_max_age(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"UTD_URL_MAX_AGE must be a number of seconds, not {value!r}; e.g. 300."
        )
    if not 0 < value <= 7 * 24 * 3600:
        raise ConfigError(
            f"UTD_URL_MAX_AGE must be more than 0 and at most 604800 seconds (a"
            f" week), not {value!r}."
        )
    return float(value)


def parse_listen(value: Any) -> tuple[str, int] | str | None:
    """Parse ``UTD_ADMIN_LISTEN``: ``"host:port"``, ``"[::1]:port"`` or
    ``"unix:/path"``; ``None`` for no admin listener.

    :returns: ``(host, port)``, a Unix socket path, or ``None``.
    :raises ConfigError: the value is none of these.
    """
    if value is None:
        return None
    hint = (
        'UTD_ADMIN_LISTEN must be "host:port" (e.g. "127.0.0.1:9191") or'
        f' "unix:/path/to/admin.sock", not {value!r}.'
    )
    if not isinstance(value, str):
        raise ConfigError(hint)
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        if path.startswith("//"):  # also accept "unix:///path"
            path = path[2:]
        if not path.startswith("/"):
            raise ConfigError(f"{hint} The Unix socket path must be absolute.")
        return path
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(hint)
    return host, int(port)
