"""``--format jsonl``: a report as one JSON object per thread per line, for log
pipelines (``kubectl exec ... | `` into Loki, Elasticsearch, CloudWatch).

Every line stands alone: it carries the host, the server instance, the pid, the
role and the worker id of its process. Field names are OpenTelemetry's semantic
conventions where one exists, the names the watchdog's JSON records use (issue
13); the others are under ``flask_utd.``:

- process: ``host.name``, ``process.pid``, ``flask_utd.instance``,
  ``flask_utd.role``, ``flask_utd.worker_id``, ``flask_utd.status`` (and
  ``flask_utd.error`` unless it is ``ok``);
- thread: ``thread.id`` (the Python ident), ``thread.name``,
  ``flask_utd.native_id``, ``flask_utd.daemon``, ``flask_utd.agent``,
  ``flask_utd.wait``;
- where it is: ``code.function``, ``code.filepath``, ``code.lineno`` (the
  innermost frame) and ``code.stacktrace`` (the whole stack as Python prints a
  traceback, innermost last);
- its request, if it serves one: ``http.request.method``, ``url.path``,
  ``flask_utd.endpoint``, ``flask_utd.request_id``, ``flask_utd.started_at``,
  ``flask_utd.elapsed_s``, ``flask_utd.stuck``;
- ``time`` (when the report was taken) and ``message``, one readable line.

A process with no thread in the report (one that did not answer) gets one line
with its process fields, so that it is not missing from the log.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

from .config import DEFAULTS


def stacktrace(frames: Sequence[Mapping[str, Any]]) -> str:
    """A stack as Python prints a traceback, innermost frame last
    (OpenTelemetry's ``code.stacktrace``); also the watchdog's."""
    lines = ["Stack (most recent call last):"]
    for frame in frames:
        lines.append(
            f'  File "{frame.get("file")}", line {frame.get("line")},'
            f" in {frame.get('function')}"
        )
        if frame.get("code"):
            lines.append(f"    {frame['code']}")
    return "\n".join(lines)


def _place(process: Mapping[str, Any], host: str) -> str:
    role = process.get("role") or "process"
    if process.get("worker_id") is not None:
        role = f"{role} {process['worker_id']}"
    return f"{role} (pid {process.get('pid')}) on {host}"


def process_fields(
    report: Mapping[str, Any], process: Mapping[str, Any]
) -> dict[str, Any]:
    """The fields of every line about ``process``, a process of ``report``."""
    fields: dict[str, Any] = {
        "time": process.get("generated_at") or report.get("generated_at"),
        "host.name": process.get("host") or report.get("host"),
        "flask_utd.instance": process.get("instance") or report.get("instance"),
        "process.pid": process.get("pid"),
        "flask_utd.role": process.get("role"),
        "flask_utd.worker_id": process.get("worker_id"),
        "flask_utd.status": process.get("status"),
    }
    if process.get("status") != "ok":
        fields["flask_utd.error"] = process.get("error")
    return fields


def thread_record(
    report: Mapping[str, Any],
    process: Mapping[str, Any],
    thread: Mapping[str, Any],
    slow_after: float = DEFAULTS["UTD_SLOW_REQUEST"],
) -> dict[str, Any]:
    """The line of one thread of ``process``, as a dict.

    :param slow_after: a request at least this old is ``flask_utd.stuck``.
    """
    record = process_fields(report, process)
    record.update(
        {
            "thread.id": thread.get("ident"),
            "thread.name": thread.get("name"),
            "flask_utd.native_id": thread.get("native_id"),
            "flask_utd.daemon": thread.get("daemon"),
            "flask_utd.agent": bool(thread.get("is_agent")),
            "flask_utd.wait": thread.get("wait"),
        }
    )
    frames = thread.get("frames") or []
    where = ""
    if frames:
        inner = frames[-1]
        record["code.function"] = inner.get("function")
        record["code.filepath"] = inner.get("file")
        record["code.lineno"] = inner.get("line")
        record["code.stacktrace"] = stacktrace(frames)
        where = (
            f" at {inner.get('file')}:{inner.get('line')} in {inner.get('function')}"
        )
    state = thread.get("wait") or "unknown"
    place = _place(process, record["host.name"])
    request = thread.get("request")
    if request:
        elapsed = request.get("elapsed_s")
        stuck = elapsed is not None and elapsed >= slow_after
        record.update(
            {
                "http.request.method": request.get("method"),
                "url.path": request.get("path"),
                "flask_utd.endpoint": request.get("endpoint"),
                "flask_utd.request_id": request.get("request_id"),
                "flask_utd.started_at": request.get("started_at"),
                "flask_utd.elapsed_s": elapsed,
                "flask_utd.stuck": stuck,
            }
        )
        seconds = "?" if elapsed is None else f"{elapsed:.1f} s"
        record["message"] = (
            f"{'stuck ' if stuck else ''}{request.get('method')} {request.get('path')}"
            f" for {seconds} in {place}, thread {thread.get('name')!r}, {state}{where}"
        )
    else:
        record["message"] = f"thread {thread.get('name')!r} in {place}, {state}{where}"
    return record


def records(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every line of :func:`render_jsonl`, as dicts, in the report's order."""
    summary = report.get("summary") or {}
    slow_after = summary.get("slow_after", DEFAULTS["UTD_SLOW_REQUEST"])
    out = []
    for process in report.get("processes") or ():
        threads = process.get("threads") or ()
        for thread in threads:
            out.append(thread_record(report, process, thread, slow_after))
        if not threads:
            record = process_fields(report, process)
            record["message"] = (
                f"{_place(process, record['host.name'])}: {process.get('status')}"
                + (f": {process['error']}" if process.get("error") else "")
            )
            out.append(record)
    return out


def render_jsonl(report: Mapping[str, Any]) -> str:
    """The report as JSON Lines: one compact JSON object per thread, each line
    complete on its own (see the module's documentation for the fields)."""
    return "".join(
        json.dumps(record, separators=(",", ":"), default=str) + "\n"
        for record in records(report)
    )
