"""Prometheus metrics of the daemon: the figures of ``trackside top``, read from
``Daemon.status()`` at scrape time (on the event loop, so a scrape sees one consistent state)."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("trackside.daemon")

# (status key, metric name, help, counter?) for the per-run figures
RUN_FIGURES = (
    ("records", "trackside_run_batches", "batches accepted from the run's writers", True),
    ("entries", "trackside_run_entries", "log() entries merged", True),
    ("bytes", "trackside_run_bytes", "bytes of batches accepted", True),
    ("duplicates", "trackside_run_duplicates", "resent batches dropped as duplicates", True),
    ("wal_bytes", "trackside_run_wal_bytes", "end offset of the run's WAL", False),
    ("merge_backlog", "trackside_run_merge_backlog", "WAL records waiting for the merger", False),
    ("pending_rows", "trackside_run_pending_rows", "rows the merger holds open", False),
    ("merge_late_dropped", "trackside_run_late_dropped", "late steps dropped (late_steps='drop')", True),
    ("writers", "trackside_run_writers", "writers the run has had", False),
    ("connections", "trackside_run_connections", "writers connected now", False),
)


class StatusCollector:
    def __init__(self, daemon, loop: asyncio.AbstractEventLoop):
        self.daemon = daemon
        self.loop = loop

    async def _status(self) -> dict:
        return self.daemon.status()

    def collect(self):
        # optional: prometheus_client (pip install 'trackside[metrics]')
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        try:
            status = asyncio.run_coroutine_threadsafe(self._status(), self.loop).result(5)
        except Exception as e:  # a scrape never takes the daemon down
            log.warning("metrics scrape failed: %s", e)
            return
        yield GaugeMetricFamily("trackside_daemon_connections", "open connections", value=status["connections"])
        yield GaugeMetricFamily("trackside_daemon_runs", "live runs", value=len(status["runs"]))
        for key, name, doc, counter in RUN_FIGURES:
            fam = (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc, labels=["run"])
            for run in status["runs"]:
                if run.get(key) is not None:
                    fam.add_metric([run["run_id"]], run[key])
            yield fam
        err = GaugeMetricFamily("trackside_run_error", "1 when the run's stream failed", labels=["run"])
        wb = CounterMetricFamily(
            "trackside_writer_batches", "batches accepted on a writer's connection", labels=["run", "writer", "rank"]
        )
        wy = CounterMetricFamily(
            "trackside_writer_bytes", "bytes accepted on a writer's connection", labels=["run", "writer", "rank"]
        )
        for run in status["runs"]:
            err.add_metric([run["run_id"]], 1 if run.get("error") else 0)
            for w in run.get("writer_stats", ()):
                labels = [run["run_id"], str(w["writer"]), str(w["rank"])]
                wb.add_metric(labels, w["records"])
                wy.add_metric(labels, w["bytes"])
        lag_r = GaugeMetricFamily(
            "trackside_run_upload_lag_records", "WAL records not yet uploaded to the run's server", labels=["run"]
        )
        lag_s = GaugeMetricFamily(
            "trackside_run_upload_lag_seconds", "age of the oldest record not yet uploaded", labels=["run"]
        )
        up_err = GaugeMetricFamily(
            "trackside_run_upload_stopped", "1 when the run's uploads stopped on a permanent error", labels=["run"]
        )
        for run in status["runs"]:
            up = run.get("upload")
            if up:
                lag_r.add_metric([run["run_id"]], up["lag_records"])
                lag_s.add_metric([run["run_id"]], up["lag_seconds"])
                up_err.add_metric([run["run_id"]], 1 if up.get("error") else 0)
        yield from (err, wb, wy, lag_r, lag_s, up_err)


def start_metrics(daemon, loop, host: str, port: int):
    """Serve ``/metrics`` on ``host:port`` from a thread; returns (server, bound port)."""
    try:
        # optional: prometheus_client (pip install 'trackside[metrics]')
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise SystemExit(
            "trackside daemon: --metrics-port needs prometheus-client: pip install 'trackside[metrics]'"
        ) from None
    if host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("metrics endpoint bound to %s: anyone who can reach it sees run ids and rates", host)
    registry = CollectorRegistry()
    registry.register(StatusCollector(daemon, loop))
    server, thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_address[1]
