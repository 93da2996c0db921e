"""What the lifecycle tests check: the socket directory against the live processes."""

from __future__ import annotations

import os
import re
import urllib.request

from demo_app.server import children
from flask_utd.core import sockets


def files_by_kind(socket_dir: str, master: int) -> dict[str, set[int]]:
    """``{".sock": {pids}, ".fh": {pids}, ...}`` in the instance directory."""
    found: dict[str, set[int]] = {}
    directory = sockets.instance_dir(socket_dir, str(master))
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return found
    for name in names:
        base, ext = os.path.splitext(name)
        found.setdefault(ext, set()).add(int(base) if base.isdigit() else -1)
    return found


def layout(
    socket_dir: str,
    master: int,
    *,
    count: int,
    master_runs: str = "agent",
    faulthandler: bool = True,
    watchdog: bool = True,
) -> bool:
    """Whether the instance directory holds exactly one socket per live process
    (the master, if it runs an agent, and each of its ``count`` children), one
    faulthandler file per safe process, the master's watchdog inbox, and
    nothing else but an unsafe note for a master that runs no agent.

    :param master_runs: ``"agent"``, ``"unsafe-agent"`` (an agent that reports
        ``unsafe``, with no faulthandler file), ``"note"`` (an unsafe note) or
        ``"nothing"`` (``lazy-apps``: the master never loads the app).
    :param watchdog: whether a master that runs a safe agent runs a watchdog
        (``UTD_WATCHDOG`` is not ``None``): its ``<pid>.watchdog`` inbox.
    """
    live = children(master)
    if len(live) != count:
        return False
    runs_agent = master_runs in ("agent", "unsafe-agent")
    agents = live | ({master} if runs_agent else set())
    expected = {".sock": agents}
    if faulthandler:
        expected[".fh"] = agents if master_runs == "agent" else live
    if master_runs == "note":
        expected[".unsafe"] = {master}
    if watchdog and master_runs == "agent":
        expected[".watchdog"] = {master}
    return files_by_kind(socket_dir, master) == expected


def no_crash(log: str, killed: int = 0) -> None:
    """No worker of this server log died of anything but the ``killed`` SIGKILLs
    we sent (harakiri included), and none segfaulted. A SIGKILL that hits a
    worker already on its way out (max-requests) is not logged as a death."""
    assert "signal 11" not in log and "Segmentation" not in log, log[-3000:]
    deaths = re.findall(
        r"DAMN ! worker \d+ \(pid: \d+\) died, killed by signal (\d+)", log
    )
    assert set(deaths) <= {"9"} and len(deaths) <= killed, deaths
    assert "DAMN" not in re.sub(r"DAMN ! worker [^\n]*signal 9 ", "", log), log[-3000:]


def get(url: str, timeout: float = 30) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())
