"""Config tuning: the mode, rate-limit state, Observer intents, runs with their candidates and scores."""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from dashboard import charts, data
from dashboard.safe import md, rows, text
from dashboard.views.common import fmt_duration, fmt_time, settings

ENV = settings()
MODE_TEXT = {
    "dev": "winning candidates are promoted automatically, within the actuator bounds",
    "prod": "winning candidates wait for an operator's approval on the Promotions page",
    "disabled": "the Observer still records intents, but no tuning run starts",
}


def _json_cell(value: Any) -> str:
    return "—" if value in (None, {}, []) else json.dumps(value, sort_keys=True, default=str)


def draw_rate_limits() -> None:
    limits = data.rate_limits_from_settings(ENV)
    st.subheader("Rate limits")
    st.caption(f"At most {limits.max_runs} runs per {fmt_duration(limits.window_s)}; {fmt_duration(limits.cooldown_s)} "
               f"cooldown after a run; after failures a backoff of {fmt_duration(limits.backoff_base_s)} "
               f"× {limits.backoff_factor:g}ⁿ⁻¹ (at most {fmt_duration(limits.backoff_max_s)}).")
    states = data.rate_limit_states(limits=limits)
    columns = st.columns(max(1, min(4, len(states))))
    for column, state in zip(columns, states, strict=False):
        with column:
            st.plotly_chart(charts.rate_limit_figure(state), key=f"rl-{state['subsystem']}")
            st.write(f"cooldown left **{fmt_duration(state['cooldown_left_s'])}** · backoff "
                     f"**{fmt_duration(state['backoff_left_s'])}** ({state['consecutive_failures']} consecutive failure(s))")
            st.write("next run: **now**" if state["allowed"] else f"next run: **{fmt_time(state['next_allowed_at'])}**")
            st.caption(md(state["reason"]))


def draw_intents() -> None:
    st.subheader("Intents")
    intents = data.tuning_intents(limit=100)
    if not intents:
        st.info("No intents yet: the Observer emits one per configuration failure it recognises in the service's "
                "logs (`selfheal tune observe LOGFILE` shows what it would find).")
        return
    runs = data.tuning_runs(limit=200)
    run_of_intent = {r["intent_id"]: r["id"] for r in sorted(runs, key=lambda r: r["id"]) if r["intent_id"] is not None}
    promotions = data.promotions_by_run(run_ids=list(run_of_intent.values()))
    st.dataframe(rows({
        "#": i["id"], "time": fmt_time(i["created_at"]), "subsystem": i["subsystem"], "class": i["error_class"],
        "status": i["status"], "outcome": data.intent_outcome(i, promotions.get(run_of_intent.get(i["id"], -1))),
        "values": _json_cell(i["values"]),
        "seed fix": _json_cell(i["seed_fix"]), "reason": i["reason"] or "—",
    } for i in intents), hide_index=True, width="stretch")


def draw_blocked() -> None:
    """Repeated failures the loop could not act on (Observer cooldown, rate limit): they leave a trace here."""
    blocked = data.tuning_blocked(limit=50)
    if not blocked:
        return
    st.subheader("Failures seen while blocked")
    st.caption("The service failed again while tuning could not run (cooldown or rate limit): one row per episode, "
               "repeats counted. They are alerted once; the next allowed run picks the failure up again.")
    st.dataframe(rows({
        "subsystem": b["subsystem"], "class": b["error_class"], "cause": b["cause"].replace("_", " "),
        "times seen": b["count"], "first seen": fmt_time(b["first_seen"]), "last seen": fmt_time(b["last_seen"]),
        "blocked until": fmt_time(b["until"]), "reason": b["reason"] or "—",
    } for b in blocked), hide_index=True, width="stretch")


def draw_runs() -> None:
    st.subheader("Runs")
    runs = data.tuning_runs(limit=20)
    if not runs:
        st.info("No tuning runs yet.")
        return
    promotions = data.promotions_by_run(run_ids=[run["id"] for run in runs])
    for run in runs:
        promotion = promotions.get(run["id"])
        # The run's decision was written when it finished ("pending_review"); the promotion's state is now.
        decision = data.promotion_state_line(promotion) if promotion is not None else run["decision"]
        title = (f"Run #{run['id']} · {md(run['subsystem'])} · {md(run['status'])} · {fmt_time(run['started_at'])}"
                 + (f" · {md(decision)}" if decision else ""))
        with st.expander(title, expanded=run is runs[0]):
            st.write(f"mode {md(run['mode'])} · intent #{run['intent_id'] or '—'} · baseline score "
                     f"{run['baseline_score'] if run['baseline_score'] is not None else '—'} · finished {fmt_time(run['finished_at'])}")
            if promotion is not None:
                when = promotion["applied_at"] or promotion["decided_at"]
                st.write(f"Now: **{md(data.promotion_state_line(promotion))}**"
                         + (f" at {fmt_time(when)}" if when and promotion["status"] != "pending_review" else ""))
            if run["reason"]:
                st.write(f"{'Summary when the run finished' if promotion is not None else 'Reason'}: {md(run['reason'])}")
            candidates = run["candidates"]
            if not candidates:
                st.caption("No candidates.")
                continue
            st.dataframe(rows({
                "#": c["id"], "params": _json_cell(c["params"]),
                "pre-flight": "—" if c["preflight_ok"] is None else ("pass" if c["preflight_ok"] else "fail"),
                "pre-flight reason": c["preflight_reason"] or "—", "canary gates": _json_cell(c["canary_gates"]),
                "score": c["score"],
            } for c in candidates), hide_index=True, width="stretch")
            # every candidate has a breakdown (its origin); only those the canary judged have a verdict
            judged = [c for c in candidates if (c["score_breakdown"] or {}).get("verdict")]
            if judged:
                best = max(judged, key=lambda c: c["score"] if c["score"] is not None else -1.0)
                st.plotly_chart(charts.score_breakdown_figure(best["score_breakdown"],
                                                              title=f"Score breakdown of candidate #{best['id']}"),
                                key=f"score-{run['id']}")
                if best["score_breakdown"].get("why"):
                    st.caption(md(best["score_breakdown"]["why"]))
            for c in candidates:
                if c["log_excerpt"]:
                    with st.popover(f"Canary log of candidate #{c['id']}"):
                        st.code(text(c["log_excerpt"]), language=None)


st.title("Config tuning")
st.write(f"Mode **{ENV.mode}**: {MODE_TEXT.get(ENV.mode, '')}. Set it with `SELFHEAL_MODE` / "
         "`KLR_SELF_HEALING_MODE` or `tuning.mode` in the config.")
draw_rate_limits()
draw_intents()
draw_blocked()
draw_runs()
