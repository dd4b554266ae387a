"""The tuning orchestrator: intents → rate-limited runs → candidates → pre-flight → canary → promotion.

``process_pending_intents(settings)`` is one cycle (the worker's ``tune`` hook and ``selfheal tune run``):

0. poll the post-promotion watches (healing.tuning.watch: verified or rolled back);
1. read the configured log sources (new lines only) and record intents / escalations;
2. expire promotions that waited longer than ``tuning.promotion_ttl_s`` and close work a killed
   process left behind (runs still "running" after ``tuning.stale_after_s`` fail as "interrupted");
3. take the open intents (oldest first) and, per intent, honour the mode:
   ``disabled`` → archived HEALING_DISABLED (observed and recorded only);
   otherwise a run slot is claimed transactionally (storage.ratelimit.claim_run_slot: 3 runs/24 h,
   6 h cooldown, backoff after failures) → RATE_LIMITED when refused (stored and alerted once per
   blocked episode, healing.tuning.blocked);
   a granted run generates candidates (minimal fix first), rejects those that cannot fit
   (pre-flight) or cannot be passed to the service (no placeholder in the canary template), runs the
   baseline and the candidates in the canary until one passes, and decides:
   * a pass → promotion: ``dev`` approved and applied at once, ``prod`` pending_review (CONFIG_TUNED);
   * only inconclusive results → a pending_review promotion flagged inconclusive, in every mode;
   * nothing fits / everything failed → escalation alert ``preflight_rejected_all`` / ``all_failed``
     (ESCALATED); an error of the machinery itself → CONFIG_TUNING_FAILED.

Every run, candidate, gate result, score and decision is written to the audit chain.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from healing.errors import SelfHealError
from healing.tuning.actuators import (
    GMU,
    MAX_MODEL_LEN,
    MAX_NUM_SEQS,
    TuningSettings,
    parse_tuning_section,
    to_decimal,
    vllm_defaults,
)
from healing.tuning.runner_config import RunnerSettings, parse_runner_settings

if TYPE_CHECKING:
    from healing.config import Settings
    from healing.tuning.canary import CanaryResult

log = logging.getLogger("selfheal.tuning")

ACTOR = "tuning"
DEMO_SUBSYSTEM = "vllm-demo"


@dataclass
class RunOutcome:
    """What became of one intent."""

    intent_id: int
    outcome: str
    reason: str
    run_id: int | None = None
    decision: str | None = None
    promotion_id: int | None = None
    alert_id: int | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"intent_id": self.intent_id, "outcome": self.outcome, "reason": self.reason, "run_id": self.run_id,
                "decision": self.decision, "promotion_id": self.promotion_id, "alert_id": self.alert_id,
                "candidates": self.candidates}


def _now(now: datetime | None) -> datetime:
    now = now or datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def running_values(runner: RunnerSettings, intent_values: Mapping[str, Any] | None = None) -> dict[str, Decimal]:
    """The service's running values: the target config, then the numbers of the message, then vLLM's defaults.

    A max_model_len of -1 (vLLM's ``auto``) is replaced by the length the message shows vLLM resolved.
    """
    from healing.tuning.promotions import read_target_values

    current = read_target_values(runner.target_config)
    values = intent_values or {}
    from_message = {GMU: values.get("gpu_memory_utilization"), MAX_MODEL_LEN: values.get("max_model_len"),
                    MAX_NUM_SEQS: values.get("num_dummy_requests") or values.get("max_num_seqs")}
    defaults = vllm_defaults(values.get("_version"))
    if current.get(MAX_MODEL_LEN, Decimal(1)) <= 0:
        # -1 is vLLM's "auto" (fit what the memory allows): the length it resolved to is what runs, when the
        # log says it; candidates never go back to auto, which would give up context silently
        del current[MAX_MODEL_LEN]
    for name in (GMU, MAX_NUM_SEQS, MAX_MODEL_LEN):
        if name not in current:
            found = from_message[name] if from_message[name] is not None else defaults.get(name)
            if found is not None:
                current[name] = to_decimal(found)
    return current


class TuningRunner:
    """One configured orchestrator; ``process`` runs a cycle (see the module docstring)."""

    def __init__(self, settings: Settings, *, notifier: Any | None = None) -> None:
        self.settings = settings
        section = settings.section("tuning")
        self.tuning: TuningSettings = parse_tuning_section(section)
        self.runner: RunnerSettings = parse_runner_settings(section)
        self.mode = settings.mode
        self._notifier = notifier
        self._alerts: list[int] = []

    # ------------------------------------------------------------------ the cycle
    def process(self, *, now: datetime | None = None, observe: bool = True, expire: bool = True,
                subsystems: Collection[str] | None = None) -> dict[str, Any]:
        from healing.tuning.promotions import expire_promotions
        from healing.tuning.sources import observe_log_sources
        from storage import tuning_queries as tq
        from storage.engine import session_scope

        # the watches first: a failure of a just-applied config is the promotion's (rolled back, and the
        # main follower skips those lines) rather than a new intent against the restored values
        watches = self.check_watches(now)
        observed: list[dict[str, Any]] = []
        if observe:
            from healing.tuning.promotions import read_target_values

            # only values the service really runs with: vLLM's defaults would override its own log
            current = read_target_values(self.runner.target_config)
            observed = observe_log_sources(self.settings, self.runner, self.tuning, current, now)
            self._alerts += [o["alert_id"] for o in observed if o.get("alert_id")]
        expired = [p["id"] for p in expire_promotions(now)] if expire else []
        recovered = self.recover_interrupted(now)
        with session_scope() as session:
            intents = tq.claim_open_intents(session, limit=self.runner.intents_per_call, now=now, subsystems=subsystems)
        outcomes = [self.process_intent(intent, now=now) for intent in intents]
        self._deliver_alerts()
        counts: dict[str, int] = {}
        for o in outcomes:
            counts[o.outcome] = counts.get(o.outcome, 0) + 1
        return {"mode": self.mode, "observed": observed, "expired_promotions": expired, "recovered": recovered,
                "watches": watches, "intents": [o.to_json() for o in outcomes], "outcomes": counts}

    def check_watches(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """One pass over the post-promotion watches (healing.tuning.watch); their alerts go out with the cycle's."""
        from healing.tuning.watch import check_watch
        from storage import tuning_queries as tq
        from storage.engine import session_scope

        with session_scope(write=False) as session:
            active = tq.active_watches(session)
        results = [check_watch(self.settings, w, self.runner, self.tuning, now) for w in active]
        self._alerts += [int(r["alert_id"]) for r in results if r.get("alert_id")]
        return results

    def recover_interrupted(self, now: datetime | None = None) -> dict[str, list[int]]:
        """Close what a killed process left behind (runs "running", intents "processing" past stale_after_s)."""
        from storage import tuning_queries as tq
        from storage.engine import session_scope
        from storage.ratelimit import finish_run

        moment = _now(now)
        reason = f"interrupted: still unfinished after {self.runner.stale_after_s:g} s (the process running it stopped)"
        with session_scope() as session:
            stale = tq.stale_work(session, older_than=moment - timedelta(seconds=self.runner.stale_after_s))
            for run_id in stale["runs"]:
                # a failed run: it counts against the window and feeds the backoff, as the attempt did happen
                finish_run(session, run_id, "failed", decision="interrupted", reason=reason, now=moment, actor=ACTOR)
                intent_id = tq.run_intent_id(session, run_id)
                intent = tq.get_intent(session, intent_id) if intent_id is not None else None
                if intent is not None and intent["status"] == "processing":
                    tq.archive_intent(session, intent_id, outcome="CONFIG_TUNING_FAILED", reason=reason, now=moment)
            for intent_id in stale["intents"]:
                tq.archive_intent(session, intent_id, outcome="CONFIG_TUNING_FAILED", reason=reason, now=moment)
        return stale

    def process_intent(self, intent: Mapping[str, Any], *, now: datetime | None = None) -> RunOutcome:
        """Honour the mode and the rate limits for one (already claimed) intent; never raises for a run failure."""
        from storage import tuning_queries as tq
        from storage.engine import session_scope
        from storage.ratelimit import claim_run_slot, finish_run

        intent_id, subsystem = int(intent["id"]), str(intent["subsystem"])
        if self.mode == "disabled":
            reason = "self-healing is disabled (mode=disabled): the failure is observed and recorded only"
            with session_scope() as session:
                tq.archive_intent(session, intent_id, outcome="HEALING_DISABLED", reason=reason, now=now)
            return RunOutcome(intent_id, "HEALING_DISABLED", reason)
        with session_scope() as session:
            claim = claim_run_slot(session, subsystem, self.runner.limits(), now, intent_id=intent_id, mode=self.mode, actor=ACTOR)
            if not claim.granted:
                from healing.tuning.blocked import note_blocked

                reason = f"rate limited: {claim.state.reason}"
                tq.archive_intent(session, intent_id, outcome="RATE_LIMITED", reason=reason, now=now)
                # nothing silent: stored once per blocked episode and alerted once (repeats are counted)
                blocked = note_blocked(session, subsystem=subsystem, error_class=str(intent["error_class"]),
                                       cause="rate_limited", reason=claim.state.reason, until=claim.state.next_allowed_at,
                                       webhook=self.settings.healing.notification.enabled, actor=ACTOR, now=_now(now))
        if not claim.granted:
            if blocked.get("alert_id"):
                self._alerts.append(int(blocked["alert_id"]))
            return RunOutcome(intent_id, "RATE_LIMITED", reason, alert_id=blocked.get("alert_id"))
        run_id = int(claim.run_id or 0)
        try:
            result = self._run(intent, run_id, now)
        except Exception as exc:  # the run must be closed and the intent archived whatever went wrong
            if not isinstance(exc, SelfHealError):
                log.exception("tuning run %s failed", run_id)
            reason = f"tuning run failed: {' '.join(str(exc).split())[:300] or type(exc).__name__}"
            with session_scope() as session:
                finish_run(session, run_id, "failed", decision="error", reason=reason, now=now, actor=ACTOR)
                tq.archive_intent(session, intent_id, outcome="CONFIG_TUNING_FAILED", reason=reason, now=now)
            return RunOutcome(intent_id, "CONFIG_TUNING_FAILED", reason, run_id, "error")
        return result

    # ------------------------------------------------------------------ one run
    def _run(self, intent: Mapping[str, Any], run_id: int, now: datetime | None) -> RunOutcome:
        from healing.tuning.canary import TemplateError, missing_placeholders, render_argv
        from healing.tuning.candidates import generate_candidates
        from healing.tuning.preflight import preflight_for
        from healing.tuning.promotions import read_target_values
        from storage import tuning_queries as tq
        from storage.engine import session_scope

        subsystem = str(intent["subsystem"])
        values = dict(intent.get("values") or {})
        current = running_values(self.runner, values)
        # one pre-flight for the run: candidates are planned and ranked with its arithmetic, then each is checked
        preflight = preflight_for(self.runner, values, current)
        target = self.runner.target_config
        # a length the config leaves to vLLM (unset, auto, -1) came from the log: the candidates say so
        resolved = (MAX_MODEL_LEN in current and target is not None and target.exists()
                    and MAX_MODEL_LEN not in read_target_values(target))
        candidates = generate_candidates(intent, current, self.tuning, self.runner.max_candidates, preflight, resolved)
        if not candidates:
            return self._escalate(intent, run_id, "no_actuator", "no candidate: no parameter of ours moves in the direction this "
                                  f"failure ({intent['error_class']}) needs from the running values", now)
        canary = self.runner.canary
        rows: list[dict[str, Any]] = []
        template_refusals = 0
        with session_scope() as session:
            for cand in candidates:
                missing = missing_placeholders(canary, cand.params) if canary.command else []
                if not canary.command:
                    ok, why = False, "tuning.canary.command is not configured: the candidate cannot be tested"
                    template_refusals += 1
                elif missing:
                    ok, why = False, f"no placeholder for {', '.join(missing)} in tuning.canary.command"
                    template_refusals += 1
                else:
                    try:
                        render_argv(canary, {**current, **cand.params}, 0, self.tuning)
                        pre = preflight.check(cand.params)
                        ok, why = pre.ok, pre.reason
                    except TemplateError as exc:
                        ok, why = False, str(exc)
                        template_refusals += 1
                row = tq.add_candidate(session, run_id=run_id, params=cand.params, uncapped_targets=cand.uncapped,
                                       origin=cand.stored_origin(), preflight_ok=ok, preflight_reason=why, now=now)
                rows.append(row)
        summary = [{"id": r["id"], "params": r["params"], "uncapped_targets": r["uncapped_targets"],
                    "preflight_ok": r["preflight_ok"], "preflight_reason": r["preflight_reason"], "rank": c.rank, "why": c.why}
                   for c, r in zip(candidates, rows, strict=True)]
        passing = [(c, r) for c, r in zip(candidates, rows, strict=True) if r["preflight_ok"]]
        if not passing:
            if template_refusals == len(rows):
                reason = "every candidate was refused before pre-flight: " + "; ".join(r["preflight_reason"] for r in rows)
                return self._fail(intent, run_id, "template_refused_all", reason, summary, now)
            reason = "pre-flight rejected every candidate: " + "; ".join(
                f"{_params_text(r['params'])}: {r['preflight_reason']}" for r in rows)
            return self._escalate(intent, run_id, "preflight_rejected_all", reason, now, summary)

        baseline = self._baseline(run_id, subsystem, current, preflight, now)
        best: tuple[float, dict[str, Any], Any] | None = None
        winner: tuple[dict[str, Any], Any, float] | None = None
        for cand, row in passing:
            result = self._canary(run_id, row["id"], {**current, **cand.params})
            score, breakdown, verdict = self._score(result, baseline)
            breakdown.update({"reason": result.reason, "metrics": result.metrics, "argv": result.argv,
                              "baseline_ran": baseline is not None and baseline.passed})
            with session_scope() as session:
                tq.record_canary(session, row["id"], gates=result.gates, score=score, score_breakdown=breakdown,
                                 log_excerpt=result.log_excerpt, argv=result.argv, now=now)
            for s in summary:
                if s["id"] == row["id"]:
                    s.update(gates=result.gates, score=score, verdict=verdict, canary_why=breakdown.get("why"))
            if verdict == "pass":
                winner = (row, cand, float(score or 0.0))
                break
            if verdict == "inconclusive" and (best is None or float(score or 0.0) > best[0]):
                best = (float(score or 0.0), row, cand)
        baseline_score = self._baseline_score(baseline)
        if winner is not None:
            row, cand, score = winner
            return self._promote(intent, run_id, row, cand.params, current, score, False, baseline_score, summary, now)
        if best is not None:
            score, row, cand = best
            return self._promote(intent, run_id, row, cand.params, current, score, True, baseline_score, summary, now)
        reason = "every candidate failed the canary: " + "; ".join(
            f"{_params_text(s['params'])}: {s.get('verdict', 'not run')}" + (f" ({s['canary_why']})" if s.get("canary_why") else "")
            for s in summary if s["preflight_ok"])
        return self._escalate(intent, run_id, "all_failed", reason, now, summary, baseline_score)

    # ------------------------------------------------------------------ canary helpers
    def _log_dir(self, run_id: int) -> Path:
        from healing.tuning.sources import tuning_dir

        return tuning_dir(self.settings) / "canary" / f"run-{run_id}"

    def _canary(self, run_id: int, name: int | str, values: Mapping[str, Any]) -> CanaryResult:
        from healing.tuning.canary import run_canary

        return run_canary(self.runner.canary, values, self.tuning, self._log_dir(run_id), f"candidate-{name}")

    def _score(self, result: CanaryResult, baseline: CanaryResult | None) -> tuple[float | None, dict[str, Any], str]:
        from healing.tuning.canary import score_result

        return score_result(result, baseline, self.runner.scoring)

    def _baseline(self, run_id: int, subsystem: str, current: Mapping[str, Decimal], preflight: Any,
                  now: datetime | None) -> CanaryResult | None:
        """Run the current config once for comparison when it fits and can be rendered (it often cannot start)."""
        from healing.tuning.canary import TemplateError, render_argv, run_canary
        from storage.audit import append_event
        from storage.engine import session_scope
        from storage.tuning_queries import audit_safe

        canary = self.runner.canary
        if not canary.baseline:
            return None
        try:
            render_argv(canary, current, 0, self.tuning)
        except TemplateError as exc:
            why = f"baseline not run: {exc}"
            result = None
        else:
            pre = preflight.check({})
            if not pre.ok:
                why, result = f"baseline not run: pre-flight: {pre.reason}", None
            else:
                result = run_canary(canary, current, self.tuning, self._log_dir(run_id), "baseline")
                why = "baseline ran and passed its gates" if result.passed else f"baseline failed: {result.reason}"
        with session_scope() as session:
            append_event(session, "tuning.baseline", subsystem, audit_safe({
                "run_id": run_id, "values": {k: str(v) for k, v in current.items()}, "note": why,
                "gates": result.gates if result else None, "metrics": result.metrics if result else None,
                "argv": result.argv if result else None}), ACTOR, now=now)
        return result if result is not None and result.passed else None

    def _baseline_score(self, baseline: CanaryResult | None) -> float | None:
        if baseline is None:
            return None
        score, _breakdown, _verdict = self._score(baseline, None)
        return score

    # ------------------------------------------------------------------ decisions
    def _promote(self, intent: Mapping[str, Any], run_id: int, row: Mapping[str, Any], params: Mapping[str, Any],
                 current: Mapping[str, Decimal], score: float, inconclusive: bool, baseline_score: float | None,
                 summary: list[dict[str, Any]], now: datetime | None) -> RunOutcome:
        from healing.tuning.promotions import apply_promotion
        from storage import tuning_queries as tq
        from storage.engine import session_scope
        from storage.ratelimit import finish_run

        moment = _now(now)
        intent_id, subsystem = int(intent["id"]), str(intent["subsystem"])
        old = {p: self.tuning.actuators[p].python_value(current[p]) if p in current else None for p in params}
        auto = self.mode == "dev" and not inconclusive
        target = str(self.runner.target_config) if self.runner.target_config else None
        if inconclusive:
            why = (f"inconclusive: score {score:.4f} is between the marginal {self.runner.scoring.marginal_threshold} and "
                   f"pass {self.runner.scoring.pass_threshold} thresholds; a human decides")
        else:
            why = f"canary passed with score {score:.4f}"
        with session_scope() as session:
            promo = tq.create_promotion(
                session, run_id=run_id, candidate_id=int(row["id"]), subsystem=subsystem, old_values=old,
                new_values=dict(params), status="approved" if auto else "pending_review", reason=why,
                expires_at=None if auto else moment + timedelta(seconds=self.runner.promotion_ttl_s),
                target_file=target, now=moment)
            if auto:
                promo = tq.set_promotion_status(session, promo["id"], "approved", actor="tuning (dev mode)", decided=True,
                                                reason=why, now=moment)
                promo = apply_promotion(session, promo, "tuning (dev mode)", self.runner.reload_command, moment, self.runner)
            decision = {"applied": "applied", "failed": "apply_failed"}.get(promo["status"], "inconclusive" if inconclusive else "pending_review")
            text = (f"promotion {promo['id']} {promo['status']}: {_params_text(params)} ({why})"
                    + (f"; {promo['reason']}" if promo["status"] == "failed" else ""))
            finish_run(session, run_id, "succeeded" if promo["status"] != "failed" else "failed", decision=decision,
                       reason=text, baseline_score=baseline_score, now=now, actor=ACTOR)
            tq.archive_intent(session, intent_id, outcome="CONFIG_TUNED" if promo["status"] != "failed" else "CONFIG_TUNING_FAILED",
                              reason=text, now=now)
        return RunOutcome(intent_id, "CONFIG_TUNED" if promo["status"] != "failed" else "CONFIG_TUNING_FAILED", text, run_id,
                          decision, promo["id"], None, summary)

    def _escalate(self, intent: Mapping[str, Any], run_id: int, reason_code: str, reason: str, now: datetime | None,
                  summary: list[dict[str, Any]] | None = None, baseline_score: float | None = None) -> RunOutcome:
        from storage import queries
        from storage import tuning_queries as tq
        from storage.engine import session_scope
        from storage.ratelimit import finish_run

        intent_id, subsystem = int(intent["id"]), str(intent["subsystem"])
        text = f"{reason_code}: {reason}"
        with session_scope() as session:
            finish_run(session, run_id, "failed", decision=reason_code, reason=reason, baseline_score=baseline_score, now=now, actor=ACTOR)
            alert = queries.record_alert(session, kind="tuning_escalation", severity="critical",
                                         subject=f"{subsystem}: {intent['error_class']}", reason=reason_code, message=reason,
                                         webhook=self.settings.healing.notification.enabled, actor=ACTOR, now=now)
            tq.archive_intent(session, intent_id, outcome="ESCALATED", reason=text, now=now)
        self._alerts.append(int(alert["id"]))
        return RunOutcome(intent_id, "ESCALATED", text, run_id, reason_code, None, int(alert["id"]), summary or [])

    def _fail(self, intent: Mapping[str, Any], run_id: int, decision: str, reason: str, summary: list[dict[str, Any]],
              now: datetime | None) -> RunOutcome:
        from storage import tuning_queries as tq
        from storage.engine import session_scope
        from storage.ratelimit import finish_run

        intent_id = int(intent["id"])
        with session_scope() as session:
            finish_run(session, run_id, "failed", decision=decision, reason=reason, now=now, actor=ACTOR)
            tq.archive_intent(session, intent_id, outcome="CONFIG_TUNING_FAILED", reason=reason, now=now)
        return RunOutcome(intent_id, "CONFIG_TUNING_FAILED", reason, run_id, decision, None, None, summary)

    def _deliver_alerts(self) -> None:
        """Hand new escalation alerts to the webhook notifier (bounded wait when we own it)."""
        if not self._alerts or not self.settings.healing.notification.enabled:
            self._alerts.clear()
            return
        from healing.images.notify import WebhookNotifier

        notifier = self._notifier or WebhookNotifier(self.settings.healing.notification)
        for alert_id in self._alerts:
            notifier.submit(alert_id)
        self._alerts.clear()
        if self._notifier is None:
            notifier.close(timeout=self.settings.healing.notification.timeout * 2)


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


# --------------------------------------------------------------------------- entry points

def process_pending_intents(settings: Settings | None = None, *, now: datetime | None = None, observe: bool = True,
                            expire: bool = True, subsystems: Collection[str] | None = None,
                            notifier: Any | None = None) -> dict[str, Any]:
    """One tuning cycle: observe the log sources, expire promotions, process the open intents (module docstring).

    This is the worker's ``tune`` hook (``healing.worker.TUNING_HOOK``) and ``selfheal tune run``.
    Returns {"mode", "observed", "expired_promotions", "intents": [outcome…], "outcomes": {OUTCOME: n}}.
    """
    from healing.config import load_settings

    return TuningRunner(settings or load_settings(), notifier=notifier).process(
        now=now, observe=observe, expire=expire, subsystems=subsystems)


DEMO_TARGET = {"gpu_memory_utilization": 0.8, "max_num_seqs": 16, "max_model_len": 4096}


def demo_tuning_section(workdir: Path, log_path: Path, target: Path) -> dict[str, Any]:
    """The ``tuning`` section of the demo: the simulator's "tight" card, its log, a canary of the simulator."""
    return {
        "log_sources": [{"path": str(log_path), "subsystem": DEMO_SUBSYSTEM}],
        "target_config": str(target),
        "gpu_profile": "tight",
        "preflight": {"gpu_source": "profile"},
        "observer": {"cooldown_seconds": 0},
        "rate_limits": {"max_runs": 1000, "cooldown_s": 0, "backoff_base_s": 0},
        "canary": {
            "command": ["{python}", "-m", "healing.tuning.simulator", "--model", "demo", "--profile", "tight",
                        "--startup-delay", "0", "--log-format", "0.10", "--gpu-memory-utilization", "{vllm.gpu_memory_utilization}",
                        "--max-num-seqs", "{vllm.max_num_seqs}", "--max-model-len", "{vllm.max_model_len}",
                        "--host", "{host}", "--port", "{port}"],
            "start_timeout_s": 30, "stop_grace_s": 5, "baseline": True,
            "probe": {"requests": 6, "concurrency": 2, "max_tokens": 8, "timeout_s": 10},
        },
    }


def run_demo_tuning(settings: Settings) -> dict[str, Any]:
    """One complete tuning run against the simulator, for ``selfheal demo``.

    A simulated vLLM on a 16 GiB card fails at gpu_memory_utilization 0.8 ("No available memory for the
    cache blocks", 0.9 GiB short); its log → an intent → candidate gmu 0.9 → pre-flight → canary (the
    real simulator on 127.0.0.1) → a promotion: pending_review in ``prod`` (the default), applied to the
    demo's own target file in ``dev``. Uses the subsystem ``vllm-demo`` so it never spends the real
    service's rate-limit budget. Returns the cycle's summary plus ``promotion`` and ``target_config``.
    """
    import io

    import yaml

    from healing.tuning.simulator import main as simulate
    from storage.engine import session_scope
    from storage.migrate import upgrade
    from storage.tuning_queries import list_promotions_detail

    upgrade(settings.database_url)
    workdir = settings.home / "demo" / "tuning"
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / "vllm.yaml"
    target.write_text(yaml.safe_dump({"vllm": dict(DEMO_TARGET)}, sort_keys=False), encoding="utf-8")
    log_path = workdir / "vllm.log"
    out = io.StringIO()
    simulate(["--model", "demo", "--profile", "tight", "--startup-delay", "0", "--gpu-memory-utilization", "0.8",
              "--max-num-seqs", "16", "--max-model-len", "4096", "--log-format", "0.10"], out=out, err=out)
    with open(log_path, "a", encoding="utf-8") as fh:  # appended: the follower reads only what is new
        fh.write(out.getvalue())
    demo = replace(settings, raw={**settings.raw, "tuning": {**settings.section("tuning"),
                                                             **demo_tuning_section(workdir, log_path, target)}})
    summary = process_pending_intents(demo, subsystems=[DEMO_SUBSYSTEM], expire=False)
    promotion = None
    promo_ids = [o["promotion_id"] for o in summary["intents"] if o.get("promotion_id")]
    if promo_ids:
        with session_scope(settings.database_url, write=False) as session:
            promotion = next((p for p in list_promotions_detail(session, limit=50) if p["id"] == promo_ids[-1]), None)
    line = "; ".join(f"intent {o['intent_id']} → {o['outcome']}: {o['reason']}" for o in summary["intents"]) or "no intent"
    return {**summary, "summary": line, "promotion": promotion, "target_config": str(target), "log": str(log_path)}
