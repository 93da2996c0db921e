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


def render_text(report: dict[str, Any]) -> str:
    """The report as a thread dump to read in a terminal.

    Per process its pid, role and worker id; per thread its name and its stack,
    innermost frame last, as in a Python traceback.
    """
    processes = report["processes"]
    answered = sum(1 for p in processes if p["status"] == "ok")
    lines = [
        f"flask-utd thread dump of server instance {report.get('instance')} on"
        f" {report['host']} at {report['generated_at']}",
        f"{len(processes)} process(es), {answered} answered",
    ]
    for process in processes:
        lines.append("")
        lines.append(f"=== {_process_title(process)}: {process['status']}")
        if process.get("error"):
            lines.append(f"    {process['error']}")
        for thread in process["threads"]:
            lines.append("")
            lines.append(_thread_title(thread))
            lines.append("Stack (most recent call last):")
            for frame in thread["frames"]:
                lines.append(
                    f'  File "{frame["file"]}", line {frame["line"]},'
                    f" in {frame['function']}"
                )
                if frame.get("code"):
                    lines.append(f"    {frame['code']}")
    return "\n".join(lines) + "\n"
