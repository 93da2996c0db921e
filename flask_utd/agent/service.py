"""The agent's RPyC service: ``dump``, ``stats`` and ``info``, nothing else.

Each answers JSON text, so nothing but plain data crosses the socket. The dump
runs in the agent's thread, where RPyC calls the service.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import rpyc

from ..core.config import MAX_LOCALS_FRAMES
from ..core.report import Process
from ..core.report import process_entry
from .frame_locals import LocalsRequest
from .ghosts import ghost_message
from .ghosts import ghost_threads
from .snapshot import process_report
from .tracking import ages
from .watchdog import records_written

log = logging.getLogger("flask_utd")

#: Largest report one agent sends, in bytes of JSON (ASCII). A larger one has
#: threads left out until it fits, and says so (``"report_truncated"``).
MAX_REPORT_BYTES = 4 * 1024 * 1024
#: Largest options payload a client may send to ``dump``.
MAX_OPTIONS = 4096


@dataclass(frozen=True)
class AgentInfo:
    """What the service says of its process, besides the stacks."""

    #: ``"master"``, ``"worker"``, ``"process"``, ``"mule"`` or ``"spooler"``.
    role: str
    #: The server's number for this worker, or ``None``.
    worker_id: int | None
    #: Why this process's stacks cannot be read safely, if so.
    unsafe: str | None = None
    #: What a dump that asks for locals gets (``UTD_LOCALS_*``), or ``None``
    #: when the app did not set ``UTD_LOCALS = True``.
    locals_policy: LocalsRequest | None = None


def _error_report(agent: AgentInfo, message: str) -> Process:
    return process_entry(
        os.getpid(),
        role=agent.role,
        worker_id=agent.worker_id,
        status="error",
        error=message,
    )


LOCALS_OFF = (
    "locals are off in this app: set UTD_LOCALS = True in its config and restart"
    " the server to allow `flask utd dump --locals` and `?locals=1`."
)


def _locals_request(
    agent: AgentInfo, options: dict[str, Any]
) -> tuple[LocalsRequest | None, str | None]:
    """What the ``locals`` dump option asks for: ``True`` (the app's
    ``UTD_LOCALS_FRAMES``) or a number of frames; and why it is refused, if so."""
    wanted = options.get("locals")
    if wanted is None or wanted is False or wanted == 0:
        return None, None
    if wanted is not True and (type(wanted) is not int or wanted < 0):
        raise ValueError("locals must be true or a number of frames")
    policy = agent.locals_policy
    if policy is None:
        return None, LOCALS_OFF
    frames = policy.frames if wanted is True else min(wanted, MAX_LOCALS_FRAMES)
    return LocalsRequest(frames, policy.reprs, policy.budget), None


def _bounded_json(report: Process) -> str:
    """``report`` as JSON text of at most :data:`MAX_REPORT_BYTES`: if it is
    larger, threads are left out (the agent's own last) until it fits, and the
    report says so with ``"threads_truncated"`` and ``"report_truncated"``."""
    text = json.dumps(report, default=repr)
    if len(text) <= MAX_REPORT_BYTES:
        return text
    threads = report["threads"]
    others = [t for t in threads if not t.get("is_agent")]
    agents = [t for t in threads if t.get("is_agent")]
    already = report.get("threads_truncated", 0)
    keep = len(others)
    while True:
        if keep:
            keep //= 2
            kept = others[:keep] + agents
        else:
            kept = []
        smaller = dict(
            report,
            threads=kept,
            threads_truncated=already + len(threads) - len(kept),
            report_truncated=True,
        )
        text = json.dumps(smaller, default=repr)
        if len(text) <= MAX_REPORT_BYTES or not kept:
            return text


class UTDService(rpyc.Service):  # type: ignore[misc]
    """The restricted RPyC service of the agent: ``dump``, ``stats`` and ``info``,
    nothing else.

    Both return a JSON string, so nothing but plain data crosses the socket.
    """

    def __init__(self, agent: AgentInfo) -> None:
        super().__init__()
        self._agent = agent

    def exposed_dump(self, options: str = "{}") -> str:
        """The ``flask-utd/1`` report of this process, as JSON text.

        :param options: a JSON object of dump options, as text.
        """
        agent = self._agent
        try:
            if type(options) is not str or len(options) > MAX_OPTIONS:
                raise ValueError("options must be a JSON object as text")
            parsed = json.loads(options)
            if not isinstance(parsed, dict):
                raise ValueError("options must be a JSON object")
            locals_request, locals_error = _locals_request(agent, parsed)
        except ValueError as err:
            return json.dumps(_error_report(agent, f"bad dump request: {err}"))
        try:
            report = process_report(
                role=agent.role,
                worker_id=agent.worker_id,
                unsafe=agent.unsafe,
                locals_request=locals_request,
                locals_error=locals_error,
            )
            return _bounded_json(report)
        except Exception as err:  # the agent must answer, whatever happened
            log.exception("flask-utd: the dump of this process failed")
            return json.dumps(
                _error_report(
                    agent,
                    f"the agent failed to dump this process ({type(err).__name__}:"
                    f" {err}); see this process's log and report it as a bug.",
                )
            )

    def exposed_info(self) -> str:
        """Who this agent is: pid, role, worker id, as JSON text."""
        agent = self._agent
        return json.dumps(
            {"pid": os.getpid(), "role": agent.role, "worker_id": agent.worker_id}
        )

    def exposed_stats(self) -> str:
        """The requests in flight in this process, without a stack walk: JSON
        text ``{"pid", "role", "worker_id", "status", "error", "requests"}``,
        ``requests`` being their ages in seconds, oldest first.

        What ``GET /_utd/metrics`` asks: it reads the request records and the
        thread list, never a frame, so a scrape costs each process a fraction of
        a dump. ``status`` is ``"unsafe"`` where a dump would be (the ages are
        still right there: no frame is read).
        """
        agent = self._agent
        unsafe = agent.unsafe
        if unsafe is None:
            ghosts = ghost_threads()
            if ghosts:
                unsafe = ghost_message(ghosts)
        answer: dict[str, Any] = {
            "pid": os.getpid(),
            "role": agent.role,
            "worker_id": agent.worker_id,
            "status": "ok" if unsafe is None else "unsafe",
            "error": unsafe,
            "requests": ages(),
        }
        # The stuck requests this process's watchdog logged, where one runs
        # (ext/prometheus.py: flask_utd_watchdog_records_total).
        records = records_written()
        if records is not None:
            answer["watchdog_records"] = records
        return json.dumps(answer)
