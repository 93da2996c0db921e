"""``merge``: one report from the reports of several hosts or server instances.

flask-utd collects within one host: behind a load balancer, ``GET /_utd/dump``
reaches one pod. To see a fleet, take a report on every host (``kubectl exec POD
-- python -m flask_utd dump --format json``) and merge them here. The merged
report is a ``flask-utd/1`` report whose processes also carry ``host``,
``instance`` and the ``generated_at`` of the report they came from; its summary
puts the stuck requests of every host first, oldest first, and groups identical
stacks across hosts (each group counts its ``hosts``). ``merged_from`` lists the
reports merged. Text, HTML and JSON Lines render it as they render one report.

Reports are read strictly: anything but ``flask-utd/1`` reports (another
schema version, a file that is not JSON, an empty input) is refused with a
one-line :class:`~flask_utd.core.errors.ReportError`, never mixed in. The same
server instance given twice is refused too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from datetime import datetime
from datetime import timezone
from typing import IO
from typing import Any
from typing import cast

from .config import DEFAULTS
from .errors import ReportError
from .report import SCHEMA
from .report import Report
from .summary import summarize

_TAKE_ONE = "take one with `python -m flask_utd dump --format json`"


def load_reports(text: str, source: str) -> list[dict[str, Any]]:
    """The reports in ``text``: one JSON report, or several one after another
    (what a loop of ``dump --format json`` over many hosts prints).

    :param source: the file's name in messages (``-`` for standard input).
    :raises ReportError: ``text`` is empty, not JSON, or holds anything but
        ``flask-utd/1`` reports.
    """
    decoder = json.JSONDecoder()
    reports = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            break
        try:
            found, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise ReportError(
                f"{source}: not JSON ({err.msg} at line {err.lineno} column"
                f" {err.colno}); {_TAKE_ONE}."
            ) from None
        reports.append(check_report(found, source))
    if not reports:
        raise ReportError(f"{source}: empty, no report in it; {_TAKE_ONE}.")
    return reports


def read_reports(
    paths: Sequence[str], stdin: IO[str] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The reports in the files ``paths`` (``-`` is standard input), and the
    name of the file each came from.

    :raises ReportError: a file cannot be read, or holds anything but
        ``flask-utd/1`` reports (see :func:`load_reports`).
    """
    reports: list[dict[str, Any]] = []
    names: list[str] = []
    for path in paths:
        try:
            if path == "-":
                text = (stdin or sys.stdin).read()
            else:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
        except UnicodeDecodeError:
            raise ReportError(
                f"{path}: not JSON (not UTF-8 text); {_TAKE_ONE}."
            ) from None
        except OSError as err:
            raise ReportError(f"{path}: cannot be read ({err.strerror}).") from None
        found = load_reports(text, path)
        reports += found
        names += [
            path if len(found) == 1 else f"{path} (report {i + 1})"
            for i in range(len(found))
        ]
    return reports, names


def check_report(report: Any, source: str) -> dict[str, Any]:
    """``report`` if it is a ``flask-utd/1`` report that merge can read.

    :raises ReportError: it is not, and the message says why.
    """
    if not isinstance(report, dict) or "schema" not in report:
        raise ReportError(
            f'{source}: not a flask-utd report (no "schema" field); {_TAKE_ONE}.'
        )
    schema = report["schema"]
    if schema != SCHEMA:
        raise ReportError(
            f"{source}: schema {schema!r}, not {SCHEMA!r}: reports of different"
            " schema versions are not merged; take every report with the same"
            " version of flask-utd."
        )
    processes = report.get("processes")
    if (
        not isinstance(report.get("host"), str)
        or not isinstance(processes, list)
        or not all(
            isinstance(p, dict)
            and isinstance(p.get("pid"), int)
            and isinstance(p.get("threads", []), list)
            for p in processes
        )
    ):
        raise ReportError(
            f"{source}: a {SCHEMA} report without a host or a list of processes"
            f" (cut short?); {_TAKE_ONE}."
        )
    return report


def _sources(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The reports that ``report`` is made of: itself, or those it merged."""
    merged = report.get("merged_from")
    if isinstance(merged, list) and merged:
        return merged
    return [
        {
            "host": report["host"],
            "instance": report.get("instance"),
            "generated_at": report.get("generated_at"),
            "processes": len(report["processes"]),
        }
    ]


def merge_reports(
    reports: Iterable[Mapping[str, Any]],
    *,
    slow_after: float | None = None,
    names: Sequence[str] | None = None,
) -> Report:
    """One ``flask-utd/1`` report of every process of ``reports``.

    Each process is labelled with the ``host``, ``instance`` and
    ``generated_at`` of its report (a merged report's processes keep theirs), and
    keeps its pid: pids repeat across hosts, the three together do not. The
    summary is made anew over all of them.

    :param reports: ``flask-utd/1`` reports (see :func:`load_reports`), or
        reports merged before.
    :param slow_after: requests at least this old are stuck; by default the
        smallest threshold of the reports' own summaries, so that no request
        stuck in one of them is left out.
    :param names: where each report came from, for messages (file names).
    :raises ReportError: no report, a report that is not ``flask-utd/1``, or one
        server instance given twice.
    """
    reports = list(reports)
    names = list(names) if names is not None else []
    names += [f"report {i + 1}" for i in range(len(names), len(reports))]
    if not reports:
        raise ReportError(
            "no report to merge: give report files, or - for standard input."
        )
    seen: dict[tuple[Any, Any], str] = {}
    sources: list[dict[str, Any]] = []
    processes: list[dict[str, Any]] = []
    unlisted: list[dict[str, Any]] = []
    thresholds: list[float] = []
    for report, name in zip(reports, names, strict=False):
        check_report(report, name)
        for source in _sources(report):
            key = (source.get("host"), source.get("instance"))
            if key in seen:
                raise ReportError(
                    f"{name}: server instance {key[1]} on {key[0]} is already in"
                    f" {seen[key]}; give each report once."
                )
            seen[key] = name
            sources.append(source)
        origin = {
            "host": report["host"],
            "instance": report.get("instance"),
            "generated_at": report.get("generated_at"),
        }
        processes += [{**origin, **process} for process in report["processes"]]
        unlisted += [{**origin, **u} for u in report.get("unlisted") or ()]
        threshold = (report.get("summary") or {}).get("slow_after")
        if isinstance(threshold, (int, float)):
            thresholds.append(threshold)
    if slow_after is None:
        slow_after = min(thresholds, default=DEFAULTS["UTD_SLOW_REQUEST"])
    hosts = list(dict.fromkeys(s.get("host") for s in sources))
    instances = list(dict.fromkeys(str(s.get("instance")) for s in sources))
    merged: dict[str, Any] = {
        "schema": SCHEMA,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "host": ", ".join(str(h) for h in hosts),
        "instance": ", ".join(instances),
        "elapsed_s": max((r.get("elapsed_s") or 0.0 for r in reports), default=0.0),
        "merged_from": sources,
        "processes": processes,
        "unlisted": unlisted,
    }
    # Checked report by report (check_report), and made of their processes.
    report = cast(Report, merged)
    report["summary"] = summarize(report, slow_after)
    return report
