"""Readable renderings of a ``flask-utd/1`` report. Imports neither Flask nor RPyC."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .report import Report
from .report import Request
from .report import Thread
from .summary import process_key


def _origin(process: Mapping[str, Any]) -> str:
    """Where a process of a merged report runs: `` on HOST, instance ID``."""
    if "host" not in process:
        return ""
    return f" on {process['host']}, instance {process.get('instance')}"


def _process_title(process: Mapping[str, Any]) -> str:
    role = process["role"]
    if process.get("worker_id"):
        role = f"{role} {process['worker_id']}"
    return f"{role} (pid {process['pid']}){_origin(process)}"


def _thread_title(thread: Thread) -> str:
    parts = [f"ident {thread['ident']}"]
    if thread.get("native_id") is not None:
        parts.append(f"native id {thread['native_id']}")
    if thread.get("daemon"):
        parts.append("daemon")
    if thread.get("is_agent"):
        parts.append("flask-utd agent")
    return f'Thread "{thread["name"]}" ({", ".join(parts)})'


def _where(process: Mapping[str, Any]) -> str:
    if process.get("worker_id"):
        where = f"worker {process['worker_id']} (pid {process['pid']})"
    else:
        where = f"{process.get('role') or 'process'} (pid {process['pid']})"
    return where + _origin(process)


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f} s"


def _frame_line(frame: Mapping[str, Any] | None) -> str:
    if not frame:
        return "no frame of the application"
    text = f"{frame['file']}, line {frame['line']}, in {frame['function']}"
    if frame.get("code"):
        text += f": {frame['code']}"
    return text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _summary_lines(report: Report, summary: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    roles = {process_key(p): p for p in report["processes"]}
    stuck = summary.get("stuck_requests") or []
    slow = summary.get("slow_after")
    older = f" (older than {slow:g} s)" if isinstance(slow, (int, float)) else ""
    lines.append("")
    if stuck:
        lines.append(f"Stuck requests{older}, oldest first:")
        for item in stuck:
            process = roles.get(
                process_key(item), {"pid": item["pid"], "role": item.get("role")}
            )
            endpoint = f" ({item['endpoint']})" if item.get("endpoint") else ""
            lines.append(
                f"  {_seconds(item.get('elapsed_s')):>8}  {item['method']}"
                f" {item['path']}{endpoint} in {_where(process)},"
                f' thread "{item["thread"]}", {item.get("wait") or "unknown"}'
            )
            if item.get("request_id"):
                lines.append(f"            request id {item['request_id']}")
            moved = _moved_text(item.get("moved"), item.get("same_line_s"))
            if moved:
                lines.append(f"            {moved}")
            lines.append(f"            at {_frame_line(item.get('app_frame'))}")
    else:
        lines.append(f"No stuck requests{older}.")
    states = summary.get("threads_by_state") or {}
    if states:
        lines.append("")
        counts = ", ".join(f"{n} {state}" for state, n in states.items())
        lines.append(f"Threads by state: {counts}")
    shared = [g for g in summary.get("stack_groups") or [] if g["count"] > 1]
    if shared:
        lines.append("")
        lines.append("Identical stacks:")
        for group in shared:
            pids = {process_key(t) for t in group["threads"]}
            kinds = {roles[pid].get("role") for pid in pids if pid in roles}
            noun = "worker" if kinds == {"worker"} else "process"
            place = (
                _where(roles[next(iter(pids))])
                if len(pids) == 1 and next(iter(pids)) in roles
                else (
                    f"{group['processes']} {noun}s"
                    if noun == "worker"
                    else f"{group['processes']} processes"
                )
            )
            if group.get("hosts", 1) > 1:
                place += f" on {group['hosts']} hosts"
            frame = group.get("app_frame") or (group["frames"] or [None])[-1]
            lines.append(
                f"  {group['count']} threads in {place}:"
                f" {group.get('wait') or 'unknown'} at {_frame_line(frame)}"
            )
            names = ", ".join(
                f'"{t["name"]}" (pid {t["pid"]}'
                + (f" on {t['host']})" if "host" in t else ")")
                for t in group["threads"][:8]
            )
            more = len(group["threads"]) - 8
            lines.append(f"      {names}{f', and {more} more' if more > 0 else ''}")
    return lines


def _state_line(thread: Thread, names: dict[int, str]) -> str | None:
    if "wait" not in thread:
        return None
    parts = [f"State: {thread['wait']}"]
    if thread.get("os_state"):
        parts.append(f"OS state {thread['os_state']}")
    if thread.get("wchan"):
        parts.append(f"wchan {thread['wchan']}")
    owner = thread.get("lock_owner")
    if owner is not None:
        parts.append(f'lock held by "{names.get(owner, "?")}" (ident {owner})')
    return ", ".join(parts)


def _moved_text(moved: bool | None, same_line_s: float | None) -> str | None:
    """What the samples say of a thread: ``None`` without samples."""
    if moved is None:
        return None
    if moved:
        return "moved between samples"
    return f"did not move between samples, on the same line for {_seconds(same_line_s)}"


def _unmoved_request_first(thread: Mapping[str, Any]) -> bool:
    """Sort key: a thread serving a request that did not move across samples
    first (``False`` sorts first); without samples, every thread alike."""
    return not (thread.get("request") and thread.get("moved") is False)


def _request_line(request: Request) -> str:
    text = f"Serving: {request['method']} {request['path']}"
    if request.get("endpoint"):
        text += f" ({request['endpoint']})"
    text += f" for {_seconds(request.get('elapsed_s'))}, since {request['started_at']}"
    if request.get("request_id"):
        text += f", request id {request['request_id']}"
    return text


def render_text(report: Report) -> str:
    """The report as a thread dump to read in a terminal.

    It opens with the summary: the stuck requests, oldest first, each with the
    line of the application it is on; the count of threads per state; and the
    stacks that several threads share. Then the full dump: per process its pid,
    role and worker id; per thread its request, its state, and its stack,
    innermost frame last, as in a Python traceback.
    """
    processes = report["processes"]
    answered = sum(1 for p in processes if p["status"] == "ok")
    sources = report.get("merged_from")
    if sources:
        lines = [
            f"flask-utd thread dump merged from {len(sources)} reports at"
            f" {report['generated_at']}:"
        ]
        lines += [
            f"  instance {s.get('instance')} on {s.get('host')}, taken"
            f" {s.get('generated_at')}"
            for s in sources
        ]
    else:
        lines = [
            f"flask-utd thread dump of server instance {report.get('instance')} on"
            f" {report['host']} at {report['generated_at']}"
        ]
    lines.append(f"{len(processes)} process(es), {answered} answered")
    unlisted = report.get("unlisted")
    if unlisted:
        pids = ", ".join(f"{u['pid']}{_origin(u)}" for u in unlisted)
        lines.append(
            f"Not in this dump: pid {pids}, child(ren) of the master with no agent"
            " (a worker starting or exiting, or a process that runs no app, such"
            " as uWSGI's http router)"
        )
    summary = report.get("summary")
    if summary is None:
        from .config import DEFAULTS
        from .summary import summarize

        summary = summarize(report, DEFAULTS["UTD_SLOW_REQUEST"])
    samples = report.get("samples")
    if samples:
        lines.append(
            f"{_plural(samples['count'], 'sample')} {samples['interval_s']:g} s apart;"
            " the last one is shown, each thread says whether it moved"
        )
    lines.extend(_summary_lines(report, summary))
    lines.append("")
    lines.append("Full dump:")
    for process in processes:
        lines.append("")
        lines.append(f"=== {_process_title(process)}: {process['status']}")
        if process.get("error"):
            lines.append(f"    {process['error']}")
        locals_entry = process.get("locals")
        if locals_entry:
            if locals_entry.get("error"):
                lines.append(f"    Locals refused: {locals_entry['error']}")
            for note in locals_entry.get("notes") or ():
                lines.append(f"    Locals incomplete: {note}")
        names = {t["ident"]: t["name"] for t in process["threads"]}
        for thread in sorted(process["threads"], key=_unmoved_request_first):
            lines.append("")
            lines.append(_thread_title(thread))
            request = thread.get("request")
            if request:
                lines.append(_request_line(request))
            state = _state_line(thread, names)
            if state:
                lines.append(state)
            moved = _moved_text(thread.get("moved"), thread.get("same_line_s"))
            if moved:
                lines.append(f"Samples: {moved}")
            lines.append("Stack (most recent call last):")
            for frame in thread["frames"]:
                lines.append(
                    f'  File "{frame["file"]}", line {frame["line"]},'
                    f" in {frame['function']}"
                )
                if frame.get("code"):
                    lines.append(f"    {frame['code']}")
                for name, value in (frame.get("locals") or {}).items():
                    lines.append(f"      {name} = {value}")
    return "\n".join(lines) + "\n"


#: Order of the thread states on the page, most telling first.
STATE_ORDER = [
    "running",
    "waiting-lock",
    "waiting-condition",
    "io-socket",
    "io-select",
    "sleeping",
    "unknown",
]
_LIB_MARKERS = ("/site-packages/", "/dist-packages/")


def short_file(path: str) -> str:
    """A file path as people read it: from the package on for installed code."""
    for marker in _LIB_MARKERS:
        if marker in path:
            return path.rsplit(marker, 1)[1]
    head, sep, tail = path.rpartition("/lib/python3.")
    if sep and "/" in tail:
        return tail.split("/", 1)[1]
    return path


#: What the page and the text call flask-utd's own threads, by their ``own`` mark.
OWN_STATES = {
    "agent": "flask-utd agent",
    "admin": "flask-utd admin listener",
    "collector": "collecting this dump",
    "watchdog": "flask-utd watchdog",
}


def is_own(thread: Mapping[str, Any]) -> bool:
    """Whether the thread is flask-utd's own (the agent marks it in ``own``):
    noise, next to the app's threads."""
    return bool(thread.get("own") or thread.get("is_agent"))


def _serves_request(thread: Mapping[str, Any]) -> bool:
    if thread.get("request"):
        return True
    # Reports without request data: a Flask dispatch in the stack says it.
    return any(f["function"] == "full_dispatch_request" for f in thread["frames"])


def _thread_state(thread: Mapping[str, Any]) -> str:
    if thread.get("wait"):
        return str(thread["wait"])
    own = thread.get("own") or ("agent" if thread.get("is_agent") else None)
    if own:
        return OWN_STATES.get(own, f"flask-utd {own}")
    return "serving a request" if _serves_request(thread) else "other"


def _app_frame(frames: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The innermost frame outside installed packages and the standard library."""
    app_frames = [f for f in frames if f["short"] == f["file"]] or frames
    return app_frames[-1] if app_frames else None


def _requests_in_progress(
    processes: list[dict[str, Any]], stuck: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every request being served, from the threads themselves: those that did
    not move across samples first, then those the summary lists as stuck
    (``stuck_requests``), marked, then the oldest."""
    stuck_by_key = {(*process_key(r), r.get("ident")): r for r in stuck}
    found = []
    for process in processes:
        for thread in process["threads"]:
            if not thread["serving"] or thread["noise"]:
                continue
            request = thread.get("request") or {}
            listed = stuck_by_key.get((*process_key(process), thread["ident"]))
            found.append(
                {
                    "host": process.get("host"),
                    "instance": process.get("instance"),
                    "pid": process["pid"],
                    "role": process["role"],
                    "worker_id": process.get("worker_id"),
                    "thread": thread["name"],
                    "method": request.get("method"),
                    "path": request.get("path"),
                    "elapsed_s": request.get("elapsed_s"),
                    "moved": thread.get("moved"),
                    "same_line_s": thread.get("same_line_s"),
                    "stuck": listed is not None,
                    "app_frame": (listed or {}).get("app_frame")
                    or _app_frame(thread["frames"]),
                }
            )
    found.sort(
        key=lambda r: (r["moved"] is not False, not r["stuck"], -(r["elapsed_s"] or 0))
    )
    return found


def _count_states(report: Report) -> dict[str, int]:
    counts: dict[str, int] = {}
    for process in report["processes"]:
        for thread in process["threads"]:
            state = _thread_state(thread)
            counts[state] = counts.get(state, 0) + 1
    return counts


def _state_key(item: tuple[str, int]) -> tuple[int, str]:
    state = item[0]
    return (
        STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER),
        state,
    )


def page_context(report: Report) -> dict[str, Any]:
    """What the HTML page (``utd/dump.html``) shows, computed from the report.

    Uses the report's ``summary`` and the threads' ``request`` / ``wait`` fields
    where the collector provides them, and counts what is there otherwise.
    """
    processes = report["processes"]
    summary = report.get("summary") or {}
    answered = summary.get("answered", sum(1 for p in processes if p["status"] == "ok"))
    by_state = summary.get("threads_by_state") or _count_states(report)
    shown = []
    for process in processes:
        threads = []
        for thread in process["threads"]:
            frames = [
                dict(f, short=short_file(str(f["file"]))) for f in thread["frames"]
            ]
            noise = is_own(thread)
            threads.append(
                {
                    **thread,
                    "frames": frames,
                    "serving": _serves_request(thread) and not noise,
                    "noise": noise,
                    "state": _thread_state(thread),
                    "request": thread.get("request"),
                    "outer": frames[:-1],
                    "inner": frames[-1] if frames else None,
                }
            )
        # Request threads first (those that did not move across samples before
        # the others), then the others; the agents and the threads making this
        # dump last.
        threads.sort(
            key=lambda t: (t["noise"], not t["serving"], _unmoved_request_first(t))
        )
        shown.append(
            {
                **process,
                "title": _process_title(process),
                "threads": threads,
                "serving": sum(1 for t in threads if t["serving"]),
            }
        )
    return {
        "report": report,
        "answered": answered,
        "process_count": summary.get("processes", len(processes)),
        "thread_count": sum(len(p["threads"]) for p in processes),
        "threads_by_state": sorted(by_state.items(), key=_state_key),
        "requests": _requests_in_progress(shown, summary.get("stuck_requests") or []),
        "processes": shown,
        "samples": report.get("samples"),
    }
