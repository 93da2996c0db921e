"""Readable renderings of a ``flask-utd/1`` report. Imports neither Flask nor RPyC."""

from __future__ import annotations

from typing import Any


def _process_title(process: dict[str, Any]) -> str:
    role = process["role"]
    if process.get("worker_id"):
        role = f"{role} {process['worker_id']}"
    return f"{role} (pid {process['pid']})"


def _thread_title(thread: dict[str, Any]) -> str:
    parts = [f"ident {thread['ident']}"]
    if thread.get("native_id") is not None:
        parts.append(f"native id {thread['native_id']}")
    if thread.get("daemon"):
        parts.append("daemon")
    if thread.get("is_agent"):
        parts.append("flask-utd agent")
    return f'Thread "{thread["name"]}" ({", ".join(parts)})'


def _where(process: dict[str, Any]) -> str:
    if process.get("worker_id"):
        return f"worker {process['worker_id']} (pid {process['pid']})"
    return f"{process.get('role') or 'process'} (pid {process['pid']})"


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f} s"


def _frame_line(frame: dict[str, Any] | None) -> str:
    if not frame:
        return "no frame of the application"
    text = f"{frame['file']}, line {frame['line']}, in {frame['function']}"
    if frame.get("code"):
        text += f": {frame['code']}"
    return text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _summary_lines(report: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    roles = {(p["pid"]): p for p in report["processes"]}
    stuck = summary.get("stuck_requests") or []
    slow = summary.get("slow_after")
    older = f" (older than {slow:g} s)" if isinstance(slow, (int, float)) else ""
    lines.append("")
    if stuck:
        lines.append(f"Stuck requests{older}, oldest first:")
        for item in stuck:
            process = roles.get(
                item["pid"], {"pid": item["pid"], "role": item.get("role")}
            )
            endpoint = f" ({item['endpoint']})" if item.get("endpoint") else ""
            lines.append(
                f"  {_seconds(item.get('elapsed_s')):>8}  {item['method']}"
                f" {item['path']}{endpoint} in {_where(process)},"
                f' thread "{item["thread"]}", {item.get("wait") or "unknown"}'
            )
            if item.get("request_id"):
                lines.append(f"            request id {item['request_id']}")
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
            pids = {t["pid"] for t in group["threads"]}
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
            frame = group.get("app_frame") or (group["frames"] or [None])[-1]
            lines.append(
                f"  {group['count']} threads in {place}:"
                f" {group.get('wait') or 'unknown'} at {_frame_line(frame)}"
            )
            names = ", ".join(
                f'"{t["name"]}" (pid {t["pid"]})' for t in group["threads"][:8]
            )
            more = len(group["threads"]) - 8
            lines.append(f"      {names}{f', and {more} more' if more > 0 else ''}")
    return lines


def _state_line(thread: dict[str, Any], names: dict[int, str]) -> str | None:
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


def _request_line(request: dict[str, Any]) -> str:
    text = f"Serving: {request['method']} {request['path']}"
    if request.get("endpoint"):
        text += f" ({request['endpoint']})"
    text += f" for {_seconds(request.get('elapsed_s'))}, since {request['started_at']}"
    if request.get("request_id"):
        text += f", request id {request['request_id']}"
    return text


def render_text(report: dict[str, Any]) -> str:
    """The report as a thread dump to read in a terminal.

    It opens with the summary: the stuck requests, oldest first, each with the
    line of the application it is on; the count of threads per state; and the
    stacks that several threads share. Then the full dump: per process its pid,
    role and worker id; per thread its request, its state, and its stack,
    innermost frame last, as in a Python traceback.
    """
    processes = report["processes"]
    answered = sum(1 for p in processes if p["status"] == "ok")
    lines = [
        f"flask-utd thread dump of server instance {report.get('instance')} on"
        f" {report['host']} at {report['generated_at']}",
        f"{len(processes)} process(es), {answered} answered",
    ]
    summary = report.get("summary")
    if summary is None:
        from .summary import summarize

        summary = summarize(report, 5.0)
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
        for thread in process["threads"]:
            lines.append("")
            lines.append(_thread_title(thread))
            if thread.get("request"):
                lines.append(_request_line(thread["request"]))
            state = _state_line(thread, names)
            if state:
                lines.append(state)
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
