"""A throwaway output format for tests/test_formats.py: a function and an entry,
as a new format is. Importing this module registers nothing; the tests add
:data:`SHOUT` to ``FORMATS`` and take it out again."""

from __future__ import annotations

from flask_utd.core.formats import Format
from flask_utd.core.report import Report


def shout(report: Report, *, compact: bool, all_threads: bool) -> str:
    pids = " ".join(str(p["pid"]) for p in report["processes"])
    return f"SHOUT pids {pids} compact {compact}\n"


SHOUT = Format("shout", "text/x-shout", shout)
