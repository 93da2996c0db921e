"""flask-utd: thread dumps of every process of a prefork Flask deployment.

``app.register_blueprint(utd_bp)`` is the whole set-up.

The Flask-facing names are imported on first use, so that ``python -m flask_utd``
runs without importing Flask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

from .errors import ConfigError
from .errors import InstanceNotFound
from .errors import SocketDirError
from .errors import UTDError

if TYPE_CHECKING:
    from .blueprint import utd_bp
    from .extension import UTD

__all__ = [
    "UTD",
    "ConfigError",
    "InstanceNotFound",
    "SocketDirError",
    "UTDError",
    "utd_bp",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        # importlib.metadata costs the lean command tens of milliseconds.
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version

        try:
            return version("flask-utd")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            return "0.0.0"
    if name == "utd_bp":
        from .blueprint import utd_bp

        return utd_bp
    if name == "UTD":
        from .extension import UTD

        return UTD
    raise AttributeError(f"module 'flask_utd' has no attribute {name!r}")
