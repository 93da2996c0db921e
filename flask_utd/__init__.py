"""flask-utd: thread dumps of every process of a prefork Flask deployment.

``app.register_blueprint(utd_bp)`` is the whole set-up.

The Flask-facing names are imported on first use, so that ``python -m flask_utd``
runs without importing Flask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

from .core.errors import ConfigError
from .core.errors import InstanceNotFound
from .core.errors import ReportError
from .core.errors import SetupError
from .core.errors import SocketDirError
from .core.errors import UTDError

if TYPE_CHECKING:
    from .ext.blueprint import utd_bp
    from .ext.extension import UTD

__all__ = [
    "UTD",
    "ConfigError",
    "InstanceNotFound",
    "ReportError",
    "SetupError",
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
        from .ext.blueprint import utd_bp

        return utd_bp
    if name == "UTD":
        from .ext.extension import UTD

        return UTD
    raise AttributeError(f"module 'flask_utd' has no attribute {name!r}")
