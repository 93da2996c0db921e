"""Readable renderings of a ``flask-utd/1`` report. Imports neither Flask nor RPyC."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import DEFAULTS
from .nesting import is_greenlet
from .nesting import nested
from .nesting import running_greenlets
from .report import Report
from .report import Request
from .report import Thread
from .summary import app_frame
from .summary import origin_of
from .summary import process_key
from .summary import summarize


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


def _greenlet_title(greenlet: Thread) -> str:
    parts = [f"id {greenlet['ident']}"]
    if greenlet.get("thread_ident") is not None:
        parts.append(f"on thread {greenlet['thread_ident']}")
    for flag, text in (
        ("hub", "hub"),
        ("main", "main greenlet"),
        ("running", "running"),
    ):
        if greenlet.get(flag):
            parts.append(text)
    return f'Greenlet "{greenlet["name"]}" ({", ".join(parts)})'


def _greenlet_lines(greenlet: Thread, names: dict[int, str]) -> list[str]:
    """What a greenlet entry says beyond a thread's: its hub's idle greenlets,
    and a blocked hub, from both sides."""
    lines = []
    blocking = greenlet.get("blocking_hub")
    if blocking:
        lines.append(
            f"Has not yielded to the hub for {_seconds(blocking['for_s'])}, since"
            f" {blocking['since']}: every other greenlet of this thread waits on it"
        )
    culprit = greenlet.get("blocked_by")
    if culprit is not None:
        lines.append(
            f"Blocked for {_seconds(greenlet.get('blocked_for_s'))} by greenlet"
            f' "{names.get(culprit, "?")}" (id {culprit}), which has not yielded'
        )
    idle = greenlet.get("idle_greenlets")
    if idle:
        lines.append(
            f"{_plural(idle, 'idle greenlet')} of the server (connections waiting"
            " for a request), not listed"
        )
    return lines


def _thread_title(thread: Thread) -> str:
    if is_greenlet(thread):
        return _greenlet_title(thread)
    parts = [f"ident {thread['ident']}"]
    if thread.get("native_id") is not None:
        parts.append(f"native id {thread['native_id']}")
    if thread.get("daemon"):
        parts.append("daemon")
    own = _own(thread)
    if own is not None:
        parts.append(OWN_STATES.get(own, f"flask-utd {own}"))
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


def wait_text(wait: str | None, call: str | None = None) -> str:
    """A thread's state as the text and the page say it: ``sleeping``,
    ``in-call (sqlite3.Connection.execute)``."""
    text = wait or "unknown"
    return f"{text} ({call})" if call else text


#: What to do when processes do not answer, by status, in the order said.
_ADVICE = {
    "refused": "run this command as the server's user (or root)",
    "timeout": "try again, or raise --timeout (UTD_TIMEOUT): a thread may hold"
    " the GIL in C code",
    "unsafe": "add `py-call-uwsgi-fork-hooks = true` to uwsgi.ini",
    "stale": "try again: the processes were exiting (a restart?)",
    "error": "read each process's error below",
}


def _status_counts(processes: list[Any]) -> str:
    counts: dict[str, int] = {}
    for process in processes:
        if process["status"] != "ok":
            counts[process["status"]] = counts.get(process["status"], 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def headline(report: Report, summary: dict[str, Any]) -> list[str]:
    """The first lines of a dump: what is known of the requests in progress, and
    what is not (processes that did not answer), never more than that.

    ``["Nothing could be read: ...", "What to do: ..."]`` when no process
    answered; else how many requests are in progress, how many of them are
    stuck, and the oldest; and how many processes are missing from that count.
    """
    processes = report["processes"]
    missing = [p for p in processes if p["status"] != "ok"]
    if not processes:
        return [
            "Nothing could be read: no process of this server instance has an"
            " agent socket (the server is starting or stopping?), so nothing is"
            " known about its requests. What to do: try again in a moment."
        ]
    if len(missing) == len(processes):
        statuses = [p["status"] for p in missing]
        advice = [_ADVICE[s] for s in _ADVICE if s in statuses]
        noun = "process" if len(processes) == 1 else f"{len(processes)} processes"
        subject = "the one process" if len(processes) == 1 else f"none of the {noun}"
        return [
            f"Nothing could be read: {subject} answered ({_status_counts(missing)}),"
            " so nothing is known about the requests in progress or stuck.",
            f"What to do: {'; '.join(advice)}. Each process below says why.",
        ]
    requests = requests_in_progress(report, summary)
    slow = summary.get("slow_after")
    threshold = f"{slow:g} s" if isinstance(slow, (int, float)) else "the threshold"
    stuck = sum(1 for r in requests if r["stuck"])
    oldest = max(
        (r["elapsed_s"] for r in requests if r.get("elapsed_s") is not None),
        default=None,
    )
    order = (
        "those that did not move between samples first, then oldest first"
        if any(r.get("moved") is False for r in requests)
        else "oldest first"
    )
    if not requests:
        lines = ["No request in progress."]
    elif stuck:
        lines = [
            f"{_plural(len(requests), 'request')} in progress, {stuck} stuck (older"
            f" than {threshold}), {order}:"
        ]
    elif len(requests) == 1:
        age = f" for {_seconds(oldest)}" if oldest is not None else ""
        lines = [f"1 request in progress{age}, not stuck (older than {threshold}):"]
    else:
        age = f", oldest {_seconds(oldest)}" if oldest is not None else ""
        lines = [
            f"{len(requests)} requests in progress{age}, none stuck (older than"
            f" {threshold}):"
        ]
    if missing:
        lines.insert(
            0,
            f"{len(missing)} of {len(processes)} processes did not answer"
            f" ({_status_counts(missing)}): their requests are not listed here;"
            " each says why below.",
        )
    return lines


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


def _request_item_lines(item: dict[str, Any]) -> list[str]:
    where = _where(item)
    mark = "stuck" if item["stuck"] else ""
    if item.get("path") is not None:
        endpoint = f" ({item['endpoint']})" if item.get("endpoint") else ""
        what = f"{item['method']} {item['path']}{endpoint}"
    else:
        what = "a request (not recorded)"
    lines = [
        f"  {mark:<5} {_seconds(item.get('elapsed_s')):>8}  {what} in {where},"
        f' {item.get("kind") or "thread"} "{item["thread"]}",'
        f" {wait_text(item.get('wait'), item.get('call'))}"
    ]
    if item.get("request_id"):
        lines.append(f"                  request id {item['request_id']}")
    moved = _moved_text(item.get("moved"), item.get("same_line_s"))
    if moved:
        lines.append(f"                  {moved}")
    lines.append(f"                  at {_frame_line(item.get('app_frame'))}")
    return lines


def _blocked_hub_lines(
    summary: dict[str, Any], roles: Mapping[Any, Mapping[str, Any]]
) -> list[str]:
    """The greenlets that do not yield, longest first: each blocks every other
    greenlet of its thread (:mod:`flask_utd.agent.greenlets`)."""
    blocked = summary.get("blocked_hubs") or []
    if not blocked:
        return []
    lines = ["Blocked hubs: a greenlet that does not yield, longest first:"]
    for item in blocked:
        process = roles.get(
            process_key(item), {"pid": item["pid"], "role": item.get("role")}
        )
        lines.append(
            f'  {_seconds(item.get("for_s")):>8}  greenlet "{item["name"]}" in'
            f" {_where(process)}, since {item.get('since')}:"
            f" {_plural(item.get('waiting') or 0, 'other greenlet')} wait on it"
        )
        request = item.get("request")
        if request:
            endpoint = f" ({request['endpoint']})" if request.get("endpoint") else ""
            wait = item.get("wait") or "unknown"
            lines.append(
                f"            serving {request['method']}"
                f" {request['path']}{endpoint}, {wait}"
            )
        lines.append(f"            at {_frame_line(item.get('app_frame'))}")
    lines.append("")
    return lines


def _summary_lines(report: Report, summary: dict[str, Any]) -> list[str]:
    lines: list[str] = [""]
    roles = {process_key(p): p for p in report["processes"]}
    lines.extend(_blocked_hub_lines(summary, roles))
    lines.extend(headline(report, summary))
    for item in requests_in_progress(report, summary):
        lines.extend(_request_item_lines(item))
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
            kinds = {t.get("kind", "thread") for t in group["threads"]}
            wait = wait_text(group.get("wait"), group.get("call"))
            lines.append(
                f"  {group['count']} {_stack_noun(kinds)} in {place}: {wait} at"
                f" {_frame_line(frame)}"
            )
            names = ", ".join(
                f'"{t["name"]}" (pid {t["pid"]}'
                + (f" on {t['host']})" if "host" in t else ")")
                for t in group["threads"][:8]
            )
            more = len(group["threads"]) - 8
            lines.append(f"      {names}{f', and {more} more' if more > 0 else ''}")
    return lines


def _stack_noun(kinds: set[str]) -> str:
    if kinds == {"greenlet"}:
        return "greenlets"
    return "threads" if kinds <= {"thread"} else "threads and greenlets"


def _state_line(thread: Thread, names: dict[int, str]) -> str | None:
    if "wait" not in thread:
        return None
    parts = [f"State: {wait_text(thread['wait'], thread.get('call'))}"]
    if thread.get("os_state"):
        parts.append(f"OS state {thread['os_state']}")
    if thread.get("wchan"):
        parts.append(f"wchan {thread['wchan']}")
    owner = thread.get("lock_owner")
    if owner is not None:
        parts.append(f'lock held by "{names.get(owner, "?")}" (ident {owner})')
    return ", ".join(parts)


def _request_line(request: Request) -> str:
    text = f"Serving: {request['method']} {request['path']}"
    if request.get("endpoint"):
        text += f" ({request['endpoint']})"
    text += f" for {_seconds(request.get('elapsed_s'))}, since {request['started_at']}"
    if request.get("request_id"):
        text += f", request id {request['request_id']}"
    return text


def _summary_of(report: Report) -> dict[str, Any]:
    """The report's ``summary``, or one made with the default threshold for a
    report that has none."""
    summary = report.get("summary")
    if summary is None:
        summary = summarize(report, DEFAULTS["UTD_SLOW_REQUEST"])
    return summary


#: What the text says instead of the stack of one of flask-utd's own threads.
_FOLDED = "stack not shown (--all-threads)"


def render_text(report: Report, *, all_threads: bool = False) -> str:
    """The report as a thread dump to read in a terminal.

    It opens with the summary: what is known of the requests in progress (or
    that nothing could be read, and what to do), then every request in
    progress, oldest first, the stuck ones marked, each with the line of the
    application it is on; the count of threads per state; and the stacks that
    several threads share. Then the full dump: per process its pid, role and
    worker id; per thread its request, its state, and its stack, innermost
    frame last, as in a Python traceback.

    :param all_threads: show the stacks of flask-utd's own threads (the agent,
        the admin listener, the collector) too; by default each is one line.
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
    samples = report.get("samples")
    if samples:
        lines.append(
            f"{_plural(samples['count'], 'sample')} {samples['interval_s']:g} s apart;"
            " the last one is shown, each thread says whether it moved"
        )
    unlisted = report.get("unlisted")
    if unlisted:
        pids = ", ".join(f"{u['pid']}{_origin(u)}" for u in unlisted)
        lines.append(
            f"Not in this dump: pid {pids}, child(ren) of the master with no agent"
            " (a worker starting or exiting, or a process that runs no app, such"
            " as uWSGI's http router)"
        )
    summary = _summary_of(report)
    slow_after = summary.get("slow_after")
    if not isinstance(slow_after, (int, float)):
        slow_after = DEFAULTS["UTD_SLOW_REQUEST"]
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
        hosted = running_greenlets(process["threads"])
        # Greenlets under their OS thread, indented, the stuck ones first;
        # request threads that did not move across samples before the others.
        threads = sorted(process["threads"], key=_unmoved_request_first)
        for thread, depth in nested(threads, slow_after):
            lines.append("")
            if not all_threads and is_own(thread):
                lines.append("    " * depth + f"{_thread_title(thread)}: {_FOLDED}")
                continue
            lines.extend(
                "    " * depth + line
                for line in _entry_lines(thread, names, hosted.get(thread["ident"]))
            )
    return "\n".join(lines) + "\n"


def _entry_lines(
    thread: Thread, names: dict[int, str], running: Thread | None
) -> list[str]:
    """One thread's (or greenlet's) part of the full dump."""
    lines = [_thread_title(thread)]
    request = thread.get("request")
    if request:
        lines.append(_request_line(request))
    state = _state_line(thread, names)
    if state:
        lines.append(state)
    moved = _moved_text(thread.get("moved"), thread.get("same_line_s"))
    if moved:
        lines.append(f"Samples: {moved}")
    if is_greenlet(thread):
        lines.extend(_greenlet_lines(thread, names))
    elif running is not None:
        # The thread's frames are those of the greenlet running on it.
        lines.append(
            f'Stack: that of greenlet "{running["name"]}" (id {running["ident"]}),'
            " which runs on this thread (below)"
        )
        return lines
    lines.append("Stack (most recent call last):")
    for frame in thread["frames"]:
        lines.append(
            f'  File "{frame["file"]}", line {frame["line"]}, in {frame["function"]}'
        )
        if frame.get("code"):
            lines.append(f"    {frame['code']}")
        for name, value in (frame.get("locals") or {}).items():
            lines.append(f"      {name} = {value}")
    return lines


#: Order of the thread states on the page, most telling first.
STATE_ORDER = [
    "running",
    "waiting-lock",
    "waiting-condition",
    "io-socket",
    "io-select",
    "in-call",
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


def _own(thread: Mapping[str, Any]) -> str | None:
    own = thread.get("own") or ("agent" if thread.get("is_agent") else None)
    return str(own) if own else None


def is_own(thread: Mapping[str, Any]) -> bool:
    """Whether the thread is flask-utd's own (the agent marks it in ``own``):
    noise, next to the app's threads."""
    return _own(thread) is not None


def _serves_request(thread: Mapping[str, Any]) -> bool:
    if thread.get("request"):
        return True
    # Reports without request data: a Flask dispatch in the stack says it.
    return any(f["function"] == "full_dispatch_request" for f in thread["frames"])


def _thread_state(thread: Mapping[str, Any]) -> str:
    if thread.get("wait"):
        return str(thread["wait"])
    own = _own(thread)
    if own:
        return OWN_STATES.get(own, f"flask-utd {own}")
    return "serving a request" if _serves_request(thread) else "other"


def requests_in_progress(
    report: Report, summary: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every request being served, read from the threads themselves: those
    that did not move across samples first, then the oldest; ``stuck`` marks
    those the summary lists as stuck
    (``stuck_requests``, older than its ``slow_after``). flask-utd's own
    threads are left out. A thread with a Flask dispatch in its stack but no
    recorded request (an older report) is listed without method and path.
    """
    stuck_by_key = {
        (*process_key(r), r.get("ident")): r
        for r in summary.get("stuck_requests") or ()
    }
    found: list[dict[str, Any]] = []
    for process in report["processes"]:
        for thread in process["threads"]:
            if is_own(thread) or not _serves_request(thread):
                continue
            request: Mapping[str, Any] = thread.get("request") or {}
            listed = stuck_by_key.get((*process_key(process), thread["ident"]))
            frames = thread["frames"]
            found.append(
                {
                    **origin_of(process),
                    "pid": process["pid"],
                    "role": process["role"],
                    "worker_id": process.get("worker_id"),
                    "thread": thread["name"],
                    "ident": thread["ident"],
                    "method": request.get("method"),
                    "path": request.get("path"),
                    "endpoint": request.get("endpoint"),
                    "request_id": request.get("request_id"),
                    "elapsed_s": request.get("elapsed_s"),
                    "wait": thread.get("wait"),
                    "call": thread.get("call"),
                    "moved": thread.get("moved"),
                    "same_line_s": thread.get("same_line_s"),
                    "stuck": listed is not None,
                    "app_frame": (listed or {}).get("app_frame")
                    or app_frame(frames)
                    or (dict(frames[-1]) if frames else None),
                }
            )
    found.sort(
        key=lambda r: (
            r["moved"] is not False,
            r["elapsed_s"] is None,
            -(r["elapsed_s"] or 0),
        )
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
    summary = _summary_of(report)
    answered = summary.get("answered", sum(1 for p in processes if p["status"] == "ok"))
    by_state = summary.get("threads_by_state") or _count_states(report)
    slow_after = summary.get("slow_after")
    if not isinstance(slow_after, (int, float)):
        slow_after = 5.0
    shown = []
    for process in processes:
        threads = []
        hosted = running_greenlets(process["threads"])
        names = {t["ident"]: t["name"] for t in process["threads"]}
        for thread in process["threads"]:
            frames = [
                dict(f, short=short_file(str(f["file"]))) for f in thread["frames"]
            ]
            noise = is_own(thread)
            # A thread on which a greenlet runs shows that greenlet's frames:
            # the greenlet's entry tells them (and serves its request).
            running = None if is_greenlet(thread) else hosted.get(thread["ident"])
            threads.append(
                {
                    **thread,
                    "frames": frames,
                    "serving": _serves_request(thread)
                    and not noise
                    and running is None,
                    "noise": noise,
                    "state": _thread_state(thread),
                    "request": thread.get("request"),
                    "outer": frames[:-1],
                    "inner": frames[-1] if frames else None,
                    "greenlet": is_greenlet(thread),
                    "runs_greenlet": running,
                    "notes": _greenlet_lines(thread, names),
                }
            )
        # Request threads first (those that did not move across samples before
        # the others), then the others; the agents and the threads making this
        # dump last; greenlets under their OS thread, stuck first.
        threads.sort(
            key=lambda t: (t["noise"], not t["serving"], _unmoved_request_first(t))
        )
        ordered = [
            dict(t, depth=depth)
            for t, depth in nested(threads, slow_after)  # type: ignore[arg-type]
        ]
        shown.append(
            {
                **process,
                "title": _process_title(process),
                "threads": ordered,
                "serving": sum(1 for t in threads if t["serving"]),
                "greenlets": sum(1 for t in threads if t["greenlet"]),
            }
        )
    return {
        "report": report,
        "answered": answered,
        "process_count": summary.get("processes", len(processes)),
        "thread_count": sum(
            1 for p in processes for t in p["threads"] if not is_greenlet(t)
        ),
        "greenlet_count": sum(p["greenlets"] for p in shown),
        "blocked_hubs": summary.get("blocked_hubs") or [],
        "threads_by_state": sorted(by_state.items(), key=_state_key),
        "headline": headline(report, summary),
        "requests": requests_in_progress(report, summary),
        "processes": shown,
        "samples": report.get("samples"),
    }
