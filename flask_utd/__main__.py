"""``python -m flask_utd dump --socket-dir DIR``: the lean entry point, no Flask.

See :mod:`flask_utd.core.lean`: neither Flask, click nor RPyC is imported.
"""

from __future__ import annotations

from .core.lean import main

if __name__ == "__main__":
    main(prog_name="python -m flask_utd")
