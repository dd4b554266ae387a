"""GET /metrics: Prometheus text built from the database at each scrape (a custom collector).

Families (all prefixed ``selfheal_``)
  images{status}                       registered images by last status (gauge); images_marked_bad
  checks_total{status}                 stored checks by outcome (counter)
  heals_total{action,outcome}          stored heals by action and outcome (counter)
  check_duration_seconds               histogram of the stored checks' durations
  run_requests{status}                 run-now requests pending or running (gauge)
  promotions_pending                   promotions waiting for review (gauge)
  tuning_runs_used{subsystem}, tuning_runs_max{subsystem}, tuning_cooldown_seconds{subsystem},
  tuning_backoff_seconds{subsystem}, tuning_run_allowed{subsystem}
  worker_heartbeat_age_seconds{worker_id,host,state}
  audit_events                          length of the audit chain (its head's seq)
  audit_chain_ok, audit_chain_verified_age_seconds   the last verification (not a verification per scrape:
                                        one runs in the background when the last is older than
                                        dashboard.chain_verify_max_age_s, or GET /api/v1/audit/verify)
  scrape_database_ok                    0 when the database could not be read (then only this family)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("selfheal.api")
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ChainStatus:
    """The latest audit-chain verification this process knows of, refreshed in the background."""

    def __init__(self, max_age_s: float) -> None:
        from dashboard.chain import ChainVerifier

        self.max_age_s = max_age_s
        self._verifier = ChainVerifier(None)
        self._lock = threading.Lock()
        self._report: dict[str, Any] | None = None

    def remember(self, report: dict[str, Any]) -> None:
        with self._lock:
            self._report = report

    def latest(self) -> dict[str, Any] | None:
        """The newest report (an endpoint's or the background thread's); starts a background run when stale."""
        background = self._verifier.latest(max_age_s=self.max_age_s)["report"]
        with self._lock:
            candidates = [r for r in (self._report, background) if r is not None]
        return max(candidates, key=lambda r: r["verified_at"]) if candidates else None


def _rows(session: Any, query: Any) -> list[Any]:
    return list(session.execute(query))


def _database_families(settings: Any) -> list[Any]:
    import sqlalchemy as sa

    from storage import queries
    from storage.engine import session_scope
    from storage.models import AuditHead, Check, Heal, Promotion, RunRequest, WorkerHeartbeat, utcnow

    families: list[Any] = []
    now = utcnow()
    with session_scope(write=False) as session:
        fleet = queries.fleet_summary(session)
        images = GaugeMetricFamily("selfheal_images", "Registered images by last status", labels=["status"])
        for status in ("healthy", "warning", "critical", "unknown"):
            images.add_metric([status], fleet.get(status, 0))
        families += [images, GaugeMetricFamily("selfheal_images_marked_bad", "Images marked bad (could not heal)",
                                               value=fleet.get("marked_bad", 0))]

        c = Check.__table__.c
        checks = CounterMetricFamily("selfheal_checks", "Stored health checks by outcome", labels=["status"])
        counted = dict.fromkeys(("healthy", "warning", "critical", "unknown"), 0)
        for status, n in _rows(session, sa.select(c.status, sa.func.count()).group_by(c.status)):
            counted[status] = int(n)
        for status, n in counted.items():
            checks.add_metric([status], n)
        families.append(checks)

        h = Heal.__table__.c
        heals = CounterMetricFamily("selfheal_heals", "Stored heals by action and outcome", labels=["action", "outcome"])
        for action, outcome, n in _rows(session, sa.select(h.action, h.outcome, sa.func.count()).group_by(h.action, h.outcome)):
            heals.add_metric([action, outcome], int(n))
        families.append(heals)

        bucket_columns = [sa.func.coalesce(sa.func.sum(sa.case((c.duration_ms <= le * 1000, 1), else_=0)), 0)
                          for le in DURATION_BUCKETS_S]
        row = session.execute(sa.select(*bucket_columns, sa.func.count(), sa.func.coalesce(sa.func.sum(c.duration_ms), 0))).one()
        total, sum_ms = int(row[-2]), float(row[-1])
        buckets = [(f"{le:g}", int(v)) for le, v in zip(DURATION_BUCKETS_S, row[:-2], strict=True)] + [("+Inf", total)]
        families.append(HistogramMetricFamily("selfheal_check_duration_seconds", "Duration of the stored health checks",
                                              buckets=buckets, sum_value=sum_ms / 1000.0))

        r = RunRequest.__table__.c
        requests = GaugeMetricFamily("selfheal_run_requests", "Run-now requests not finished", labels=["status"])
        open_requests = {"pending": 0, "running": 0}
        for status, n in _rows(session, sa.select(r.status, sa.func.count()).where(r.status.in_(["pending", "running"]))
                               .group_by(r.status)):
            open_requests[status] = int(n)
        for status, n in open_requests.items():
            requests.add_metric([status], n)
        families.append(requests)

        p = Promotion.__table__.c
        pending = session.execute(sa.select(sa.func.count()).where(p.status == "pending_review")).scalar_one()
        families.append(GaugeMetricFamily("selfheal_promotions_pending", "Promotions waiting for review", value=int(pending)))

        beats = GaugeMetricFamily("selfheal_worker_heartbeat_age_seconds", "Seconds since each worker's last heartbeat",
                                  labels=["worker_id", "host", "state"])
        w = WorkerHeartbeat.__table__.c
        for beat in _rows(session, sa.select(w.worker_id, w.host, w.state, w.last_beat).order_by(w.worker_id)):
            beats.add_metric([beat.worker_id, beat.host, beat.state], max(0.0, (now - beat.last_beat).total_seconds()))
        families.append(beats)

        head = session.get(AuditHead, 1)
        families.append(GaugeMetricFamily("selfheal_audit_events", "Events in the audit chain (its head's seq)",
                                          value=head.seq if head else 0))

    from healing.tuning.orchestration_commands import tune_status

    status = tune_status(settings)
    gauges = {key: GaugeMetricFamily(f"selfheal_{key}", text, labels=["subsystem"]) for key, text in (
        ("tuning_runs_used", "Tuning runs used in the rate-limit window"),
        ("tuning_runs_max", "Tuning runs allowed in the rate-limit window"),
        ("tuning_cooldown_seconds", "Cooldown left before the next tuning run"),
        ("tuning_backoff_seconds", "Backoff left after consecutive failed runs"),
        ("tuning_run_allowed", "1 when a tuning run may start now"),
    )}
    for state in status["subsystems"]:
        name = [state["subsystem"]]
        gauges["tuning_runs_used"].add_metric(name, state["runs_used"])
        gauges["tuning_runs_max"].add_metric(name, state["max_runs"])
        gauges["tuning_cooldown_seconds"].add_metric(name, state["cooldown_left_s"])
        gauges["tuning_backoff_seconds"].add_metric(name, state["backoff_left_s"])
        gauges["tuning_run_allowed"].add_metric(name, 1 if state["allowed"] else 0)
    families += list(gauges.values())
    return families


class DatabaseCollector(Collector):
    """Reads the database at each scrape; a database that cannot be read yields scrape_database_ok 0."""

    def __init__(self, settings: Any, chain: ChainStatus) -> None:
        self.settings = settings
        self.chain = chain

    def collect(self) -> Iterator[Any]:
        try:
            families = _database_families(self.settings)
            ok = 1
        except Exception as exc:  # a locked or missing database must not turn the scrape into a 500
            log.warning("metrics: cannot read the database: %s", " ".join(str(exc).split()))
            families, ok = [], 0
        yield from families
        yield GaugeMetricFamily("selfheal_scrape_database_ok", "1 when the database could be read for this scrape", value=ok)
        report = self.chain.latest()
        if report is not None:
            from storage.models import utcnow

            verified_at: datetime = report["verified_at"]
            yield GaugeMetricFamily("selfheal_audit_chain_ok", "1 when the last verification found the chain intact",
                                    value=1 if report["ok"] else 0)
            yield GaugeMetricFamily("selfheal_audit_chain_verified_age_seconds", "Seconds since the last chain verification",
                                    value=max(0.0, (utcnow() - verified_at).total_seconds()))


def render(registry: Any) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(registry)
