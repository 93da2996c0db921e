"""The watchdog's log records: what one holds, its two forms, and where it goes.

A record is data with OpenTelemetry's names (the semantic conventions for the
attributes, the log data model for ``timestamp``, ``severity_*``, ``body``,
``trace_id`` and ``span_id``), plus flask-utd's own fields under ``flask_utd.``.
``UTD_WATCHDOG_FORMAT`` chooses the message: ``"text"``, one readable block, or
``"json"``, the data as one JSON object on one line. Either way the data rides
on the log record too, as ``record.flask_utd``, for a structured formatter.

Records go to the logger ``flask_utd.watchdog``. When nothing in the app's
logging would show them, a handler writing to ``sys.stderr`` is added, as Flask
does for ``app.logger`` (``flask.logging.create_logger``): under uWSGI and
gunicorn that is the server's log. It is taken away again as soon as the app's
own logging handles them.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from .report import Frame

#: The logger every record goes to.
LOGGER_NAME = "flask_utd.watchdog"
#: ``event.name`` of a stuck request, and of its end.
STUCK = "flask_utd.watchdog.stuck"
ENDED = "flask_utd.watchdog.ended"
#: Frames named in the one-line body, innermost first.
BODY_FRAMES = 3

# OpenTelemetry's SeverityNumber for Python's levels (log data model).
_SEVERITY = {logging.WARNING: 13, logging.INFO: 9}


@dataclass
class WatchdogRecord:
    """One record: its level, its one-line body, its data, and the stack it names."""

    level: int
    body: str
    #: The attributes, with OpenTelemetry's names where it has one.
    data: dict[str, Any]
    #: The whole stack, outermost first, as in a report.
    frames: list[Frame] = field(default_factory=list)
    #: Lines of the readable block after the body.
    details: list[str] = field(default_factory=list)

    def text(self) -> str:
        """The readable block: the body, then the details and the stack,
        innermost frame first."""
        from .render import short_file

        lines = [self.body, *(f"  {line}" for line in self.details)]
        if self.frames:
            lines.append("  stack, innermost first:")
            for frame in reversed(self.frames):
                lines.append(
                    f"    {short_file(frame['file'])}, line {frame['line']},"
                    f" in {frame['function']}"
                )
                if frame.get("code"):
                    lines.append(f"      {frame['code']}")
        return "\n".join(lines)

    def json(self, created: float | None = None) -> str:
        """The data as one line of JSON, with the log data model's fields first."""
        created = time.time() if created is None else created
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        line = {
            "timestamp": f"{stamp}.{int(created * 1000) % 1000:03d}Z",
            "severity_text": logging.getLevelName(self.level),
            "severity_number": _SEVERITY.get(self.level, 0),
            "body": self.body,
            **{k: v for k, v in self.data.items() if v is not None},
        }
        return json.dumps(line, separators=(",", ":"), default=str)


def _where(role: str, worker_id: int | None, pid: int) -> str:
    if worker_id:
        return f"{role} {worker_id} (pid {pid})"
    return f"{role} (pid {pid})"


def _innermost(frames: Sequence[Frame], count: int = BODY_FRAMES) -> str:
    # Imported when a record is written: a worker need not carry the renderings.
    from .render import short_file

    parts = [
        f"{f['function']} ({short_file(f['file'])}:{f['line']})"
        for f in reversed(frames[-count:])
    ]
    return " < ".join(parts)


def _code_location(frames: Sequence[Frame]) -> dict[str, Any]:
    """``code.*`` of the innermost frame, where the thread is (as in the JSON
    Lines of a dump), the whole stack as ``code.stacktrace``, and the innermost
    frame of the application as ``flask_utd.app.*`` when that is another one:
    the line to group records by."""
    from .jsonl import stacktrace
    from .summary import app_frame

    if not frames:
        return {}
    inner = frames[-1]
    found: dict[str, Any] = {
        "code.function": inner["function"],
        "code.filepath": inner["file"],
        "code.lineno": inner["line"],
        "code.stacktrace": stacktrace(frames),
    }
    app = app_frame(frames)
    if app and (app["file"], app["line"]) != (inner["file"], inner["line"]):
        found.update(
            {
                "flask_utd.app.function": app["function"],
                "flask_utd.app.filepath": app["file"],
                "flask_utd.app.lineno": app["line"],
            }
        )
    return found


def _where_from(pid: int, instance: str | None) -> dict[str, Any]:
    """The fields that say where a record comes from, as in the JSON Lines of a
    dump: the host, the server instance, the process."""
    return {
        "host.name": socket.gethostname(),
        "flask_utd.instance": instance,
        "process.pid": pid,
    }


def _samples_text(moved: bool | None, same_line_s: float | None, samples: int) -> str:
    if moved is None:
        return "seen once"
    if moved:
        return f"moved between {samples} samples"
    return (
        f"did not move between {samples} samples, on the same line for"
        f" {same_line_s or 0:.1f} s"
    )


def stuck_record(
    *,
    pid: int,
    instance: str | None = None,
    role: str,
    worker_id: int | None,
    thread: dict[str, Any],
    request: dict[str, Any] | None,
    trace: tuple[str, str] | None,
    elapsed_s: float,
    threshold_s: float,
    moved: bool | None,
    same_line_s: float | None,
    samples: int,
) -> WatchdogRecord:
    """The WARNING record of a request that ran past the threshold, captured by
    its own process's watchdog.

    :param thread: the thread's report entry (frames, wait, names).
    :param request: its ``request`` entry.
    :param trace: ``(trace id, span id)`` of its ``traceparent`` header.
    """
    frames = thread.get("frames") or []
    request = request or {}
    method, path = request.get("method"), request.get("path")
    endpoint = request.get("endpoint")
    where = _where(role, worker_id, pid)
    wait = thread.get("wait") or "unknown"
    sampled = _samples_text(moved, same_line_s, samples)
    what = f"{method} {path}" + (f" ({endpoint})" if endpoint else "")
    body = (
        f"flask-utd watchdog: request stuck for {elapsed_s:.1f} s (threshold"
        f' {threshold_s:g} s): {what} in {where}, thread "{thread.get("name")}",'
        f" {wait}, {sampled}"
    )
    if frames:
        body += f"; at {_innermost(frames)}"
    details = [
        f'thread "{thread.get("name")}" (ident {thread.get("ident")}, native id'
        f" {thread.get('native_id')}), started {request.get('started_at')}",
    ]
    ids = []
    if request.get("request_id"):
        ids.append(f"request id {request['request_id']}")
    if trace:
        ids.append(f"trace id {trace[0]}, span id {trace[1]}")
    if ids:
        details.append(", ".join(ids))
    data: dict[str, Any] = {
        "event.name": STUCK,
        **_where_from(pid, instance),
        "flask_utd.role": role,
        "flask_utd.worker_id": worker_id,
        "thread.id": thread.get("ident"),
        "thread.name": thread.get("name"),
        "flask_utd.native_id": thread.get("native_id"),
        "http.request.method": method,
        "url.path": path,
        "flask_utd.endpoint": endpoint,
        "flask_utd.request_id": request.get("request_id"),
        "trace_id": trace[0] if trace else None,
        "span_id": trace[1] if trace else None,
        "flask_utd.started_at": request.get("started_at"),
        "flask_utd.elapsed_s": round(elapsed_s, 3),
        "flask_utd.threshold_s": threshold_s,
        "flask_utd.wait": wait,
        "flask_utd.moved": moved,
        "flask_utd.same_line_s": same_line_s,
        "flask_utd.samples": samples,
        **_code_location(frames),
        "flask_utd.source": "agent",
    }
    return WatchdogRecord(logging.WARNING, body, data, list(frames), details)


def stalled_record(
    *,
    pid: int,
    instance: str | None = None,
    worker_id: int | None,
    thread: dict[str, Any] | None,
    busy_s: float,
    threshold_s: float,
    reporter: int,
    note: str,
) -> WatchdogRecord:
    """The WARNING record of a worker that the server's accounting shows busy
    past the threshold and whose agent does not answer (a thread holds the GIL,
    or the process is stopped), captured by the master through faulthandler.

    :param thread: one thread from faulthandler (no name, request or wait), or
        ``None`` when faulthandler gave nothing (``note`` says why).
    :param reporter: the master's pid.
    """
    frames = (thread or {}).get("frames") or []
    where = _where("worker", worker_id, pid)
    body = (
        f"flask-utd watchdog: {where} busy for {busy_s:.1f} s (threshold"
        f" {threshold_s:g} s) and its agent does not answer: a thread may hold the"
        f" GIL; captured by the master (pid {reporter}) through faulthandler"
    )
    if frames:
        body += f"; at {_innermost(frames)}"
    details = [note]
    if thread is not None:
        details.insert(0, f"thread {thread.get('name')} (ident {thread.get('ident')})")
    data: dict[str, Any] = {
        "event.name": STUCK,
        **_where_from(pid, instance),
        "flask_utd.role": "worker",
        "flask_utd.worker_id": worker_id,
        "thread.id": (thread or {}).get("ident"),
        "thread.name": (thread or {}).get("name"),
        "flask_utd.elapsed_s": round(busy_s, 3),
        "flask_utd.threshold_s": threshold_s,
        **_code_location(frames),
        "flask_utd.source": "faulthandler",
        "flask_utd.reported_by": reporter,
        "flask_utd.note": note,
    }
    return WatchdogRecord(logging.WARNING, body, data, list(frames), details)


def ended_record(
    *,
    pid: int,
    instance: str | None = None,
    role: str,
    worker_id: int | None,
    thread: dict[str, Any],
    request: dict[str, Any] | None,
    trace: tuple[str, str] | None,
    total_s: float,
    reported_at_s: float,
) -> WatchdogRecord:
    """The INFO record of a request reported stuck that has now ended."""
    request = request or {}
    method, path = request.get("method"), request.get("path")
    endpoint = request.get("endpoint")
    what = f"{method} {path}" + (f" ({endpoint})" if endpoint else "")
    body = (
        f"flask-utd watchdog: request ended after {total_s:.1f} s, reported stuck"
        f" at {reported_at_s:.1f} s: {what} in {_where(role, worker_id, pid)},"
        f' thread "{thread.get("name")}"'
    )
    data: dict[str, Any] = {
        "event.name": ENDED,
        **_where_from(pid, instance),
        "flask_utd.role": role,
        "flask_utd.worker_id": worker_id,
        "thread.id": thread.get("ident"),
        "thread.name": thread.get("name"),
        "http.request.method": method,
        "url.path": path,
        "flask_utd.endpoint": endpoint,
        "flask_utd.request_id": request.get("request_id"),
        "trace_id": trace[0] if trace else None,
        "span_id": trace[1] if trace else None,
        "flask_utd.elapsed_s": round(total_s, 3),
        "flask_utd.reported_at_s": round(reported_at_s, 3),
        "flask_utd.source": "agent",
    }
    return WatchdogRecord(logging.INFO, body, data)


def unstalled_record(
    *,
    pid: int,
    instance: str | None = None,
    worker_id: int | None,
    busy_s: float,
    gone: bool,
    reporter: int,
) -> WatchdogRecord:
    """The INFO record of a worker reported through faulthandler that is no
    longer stuck: it runs again, or it is gone (killed, or it exited)."""
    where = _where("worker", worker_id, pid)
    if gone:
        body = (
            f"flask-utd watchdog: {where}, reported stuck, is gone after at least"
            f" {busy_s:.1f} s (killed, or it exited)"
        )
    else:
        body = f"flask-utd watchdog: {where} runs again after {busy_s:.1f} s stuck"
    data: dict[str, Any] = {
        "event.name": ENDED,
        **_where_from(pid, instance),
        "flask_utd.role": "worker",
        "flask_utd.worker_id": worker_id,
        "flask_utd.elapsed_s": round(busy_s, 3),
        "flask_utd.gone": gone,
        "flask_utd.source": "faulthandler",
        "flask_utd.reported_by": reporter,
    }
    return WatchdogRecord(logging.INFO, body, data)


# -- where records go ---------------------------------------------------------------


class _StderrHandler(logging.Handler):
    """Writes to ``sys.stderr`` as it is at each record (a server or a test may
    replace it): a JSON record as its line alone, a text record with the time,
    level and logger in front, as Flask's default handler does."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if getattr(record, "flask_utd_format", "text") == "json":
                line = record.getMessage()
            else:
                line = self.format(record)
            stream = sys.stderr
            stream.write(line + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


_default_handler = _StderrHandler()
_default_handler.setFormatter(
    logging.Formatter("[%(asctime)s] %(levelname)s in %(name)s: %(message)s")
)


def _handled_elsewhere(logger: logging.Logger) -> bool:
    """Whether a handler other than ours would show this logger's records at its
    effective level (``flask.logging.has_level_handler``, ours left out)."""
    level = logger.getEffectiveLevel()
    current: logging.Logger | None = logger
    while current is not None:
        if any(
            h is not _default_handler and h.level <= level for h in current.handlers
        ):
            return True
        if not current.propagate:
            break
        current = current.parent
    return False


def logger() -> logging.Logger:
    """The watchdog's logger, set up so that its records show somewhere.

    Its level is INFO unless the app set one (so that the end of a stuck
    request shows too); the stderr handler is there only while no other handler
    would show the records. Checked at every record: records are rare, and the
    app may configure logging after the watchdog started.
    """
    log = logging.getLogger(LOGGER_NAME)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    ours = _default_handler in log.handlers
    if _handled_elsewhere(log):
        if ours:
            log.removeHandler(_default_handler)
    elif not ours:
        log.addHandler(_default_handler)
    return log


def emit(record: WatchdogRecord, fmt: str) -> None:
    """Log ``record`` in the form ``fmt`` (``"text"`` or ``"json"``)."""
    message = record.json() if fmt == "json" else record.text()
    logger().log(
        record.level,
        message,
        extra={"flask_utd": record.data, "flask_utd_format": fmt},
    )
