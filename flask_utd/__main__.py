"""``python -m flask_utd dump --socket-dir DIR``: the lean entry point, no Flask."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main(prog_name="python -m flask_utd")
