"""The output formats of a report, in one table.

``flask utd dump --format NAME``, ``python -m flask_utd dump --format NAME`` and
``GET /_utd/dump?format=NAME`` (or an ``Accept`` header naming the media type)
all read :data:`FORMATS`: a new format is one function and one entry there.

Every process of a server imports this table (``flask utd dump`` takes its names
for ``--format``) and few ever write a report, so each function imports what it
writes with when it is called.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from .report import Report


class Renderer(Protocol):
    """A function that writes a report in one format."""

    def __call__(self, report: Report, *, compact: bool, all_threads: bool) -> str:
        """The text of ``report``.

        :param compact: ``True`` for the endpoint, which renders in a process of
            the server: as cheap to make as the format allows. ``False`` for the
            command lines, which print for people.
        :param all_threads: show flask-utd's own threads (``own``) in full, where
            the format folds them (``--all-threads``).
        """


@dataclass(frozen=True)
class Format:
    """One way to write a report."""

    #: What ``--format`` and ``?format=`` take.
    name: str
    #: The endpoint's ``Content-Type``, and what an ``Accept`` header names to
    #: ask for this format.
    media_type: str
    #: Writes the report.
    render: Renderer


def _json(report: Report, *, compact: bool, all_threads: bool) -> str:
    if compact:
        # json.dumps encodes in C only without indent: indented, the report of a
        # master and 16 workers took 4 ms instead of 0.7 ms, in a worker that
        # shares the CPUs with every agent (docs/performance.md).
        return json.dumps(report, separators=(",", ":")) + "\n"
    return json.dumps(report, indent=2) + "\n"


def _text(report: Report, *, compact: bool, all_threads: bool) -> str:
    from .render import render_text

    return render_text(report, all_threads=all_threads)


def _html(report: Report, *, compact: bool, all_threads: bool) -> str:
    from .page import render_page  # and so Jinja: only when a page is asked for

    return render_page(report)


def _jsonl(report: Report, *, compact: bool, all_threads: bool) -> str:
    # One JSON object per thread per line: always compact.
    from .jsonl import render_jsonl

    return render_jsonl(report)


#: Every format, by name. The first is the endpoint's answer to ``Accept: */*``
#: (curl, most HTTP libraries) and to an ``Accept`` that names no format here.
FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("json", "application/json", _json),
        Format("text", "text/plain", _text),
        Format("html", "text/html", _html),
        Format("jsonl", "application/x-ndjson", _jsonl),
    )
}


#: What the command lines print when no format is given.
DEFAULT = "text"


def render(
    report: Report, name: str, *, compact: bool = False, all_threads: bool = False
) -> str:
    """The report in format ``name``.

    :param name: a key of :data:`FORMATS`.
    :param compact: as cheap to make as the format allows (see :class:`Renderer`).
    :param all_threads: flask-utd's own threads in full (the text folds each to
        one line by default; JSON and the page always have them).
    :raises ValueError: no such format.
    """
    try:
        found = FORMATS[name]
    except KeyError:
        raise ValueError(
            f"no output format {name!r}: use one of {', '.join(FORMATS)}"
        ) from None
    return found.render(report, compact=compact, all_threads=all_threads)
