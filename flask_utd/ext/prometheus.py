"""The Prometheus metrics of a server instance, made with ``prometheus_client``.

A custom collector (``prometheus_client``'s way of exposing numbers that live
elsewhere) over one answer of :func:`flask_utd.core.collector.collect_stats`, in
a registry made for that one scrape: nothing is kept between scrapes, nothing of
the app's own ``prometheus_client`` registry is mixed in, and the exposition
format is ``prometheus_client``'s (the text format, or OpenMetrics when the
scraper asks for it).

Imported by the first ``GET /_utd/metrics`` of a process, not with the
blueprint: ``prometheus_client`` costs about 13 ms to import.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.registry import CollectorRegistry

#: Every status a process can have in a report; each gets a sample, 0 if no
#: process has it, so that an alert on one of them never sees a missing series.
STATUSES = ("ok", "timeout", "refused", "stale", "unsafe", "error")


def _labels(process: dict[str, Any]) -> tuple[str, str]:
    worker_id = process.get("worker_id")
    return str(process.get("role") or "process"), (
        "" if worker_id is None else str(worker_id)
    )


class StatsCollector(Collector):
    """The metrics of one :func:`~flask_utd.core.collector.collect_stats` answer.

    Per process that answered, labelled by ``role`` and ``worker_id`` (empty
    for the master): ``flask_utd_requests_in_flight``,
    ``flask_utd_oldest_request_age_seconds`` and ``flask_utd_stuck_requests``.
    Per status: ``flask_utd_processes``. No pid label: a respawned worker keeps
    its worker id and its series. Two processes with the same labels (an old
    worker still exiting beside its replacement) are added up, the oldest age
    being the larger.

    :param stats: what :func:`~flask_utd.core.collector.collect_stats` returned.
    """

    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        processes = self.stats["processes"]
        in_flight: dict[tuple[str, str], int] = {}
        oldest: dict[tuple[str, str], float] = {}
        stuck: dict[tuple[str, str], int] = {}
        for process in processes:
            if "in_flight" not in process:
                continue  # its agent did not answer: no number rather than a 0
            key = _labels(process)
            in_flight[key] = in_flight.get(key, 0) + process["in_flight"]
            oldest[key] = max(oldest.get(key, 0.0), process["oldest_s"])
            stuck[key] = stuck.get(key, 0) + process["stuck"]
        per_process = ["role", "worker_id"]
        families: list[tuple[GaugeMetricFamily, dict[tuple[str, str], Any]]] = [
            (
                GaugeMetricFamily(
                    "flask_utd_requests_in_flight",
                    "Requests the process is serving now (flask-utd's own left out).",
                    labels=per_process,
                ),
                in_flight,
            ),
            (
                GaugeMetricFamily(
                    "flask_utd_oldest_request_age_seconds",
                    "Age of the oldest request the process is serving, 0 when idle.",
                    labels=per_process,
                ),
                oldest,
            ),
            (
                GaugeMetricFamily(
                    "flask_utd_stuck_requests",
                    "Requests the process has served for at least UTD_SLOW_REQUEST"
                    f" ({self.stats['slow_after']:g} s).",
                    labels=per_process,
                ),
                stuck,
            ),
        ]
        for family, values in families:
            for key, value in sorted(values.items()):
                family.add_metric(list(key), value)
            yield family
        by_status = GaugeMetricFamily(
            "flask_utd_processes",
            "Processes of the server instance, by how their agent answered"
            " (ok, timeout, refused, stale, unsafe, error).",
            labels=["status"],
        )
        counts = dict.fromkeys(STATUSES, 0)
        for process in processes:
            counts[process["status"]] = counts.get(process["status"], 0) + 1
        for status, count in counts.items():
            by_status.add_metric([status], count)
        yield by_status
        records = CounterMetricFamily(
            "flask_utd_watchdog_records",
            "Stuck requests the process's watchdog logged since it started"
            " (a master counts the workers it logged through faulthandler).",
            labels=per_process,
        )
        logged: dict[tuple[str, str], int] = {}
        for process in processes:
            if "watchdog_records" in process:
                key = _labels(process)
                logged[key] = logged.get(key, 0) + process["watchdog_records"]
        for key, count in sorted(logged.items()):
            records.add_metric(list(key), count)
        yield records


def exposition(stats: dict[str, Any], accept: str | None = None) -> tuple[bytes, str]:
    """The metrics of ``stats`` as a scraper asked for them: the body and its
    ``Content-Type``.

    :param stats: what :func:`~flask_utd.core.collector.collect_stats` returned.
    :param accept: the scraper's ``Accept`` header: OpenMetrics if it asks for
        it, else Prometheus's text format.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
