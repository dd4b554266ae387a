"""Overview: fleet status tiles, recent alerts, worker heartbeat, rate-limit summary (live)."""

from __future__ import annotations

import streamlit as st

from dashboard import actions, charts, data
from dashboard.safe import md, rows, text
from dashboard.views.common import dash_settings, fmt_duration, fmt_time, operator, settings, status_label

ENV = settings()
LIMITS = dash_settings()


def fleet_tiles() -> None:
    counts = data.fleet()
    if counts["total"] == 0:
        st.info("No images are registered yet. Register one with `selfheal register IMAGE.rts.png` "
                "(or list it under `monitoring.images` in the config); the worker checks it on its interval.")
        return
    columns = st.columns(5)
    for column, status in zip(columns, ("healthy", "warning", "critical", "unknown"), strict=False):
        column.metric(status_label(status), counts[status])
    columns[4].metric("marked bad", counts["marked_bad"], help="images whose healing failed max_heal_attempts times")
    st.plotly_chart(charts.fleet_status_figure(counts), key="fleet-chart")


def worker_panel() -> None:
    status = data.worker_status(stale_after_s=LIMITS.worker_stale_s)
    beat = status["beat"]
    st.subheader("Worker")
    if status["state"] == "absent":
        st.warning("No worker has ever reported to this database. Start one with `selfheal worker` "
                   "(foreground) or `selfheal daemon start`; until then nothing is checked and "
                   "\"check now\" requests wait.")
    elif status["state"] == "running":
        st.success(f"Running: pid {beat['pid']} on {md(beat['host'])}, last heartbeat {fmt_duration(beat['age_s'])} ago.")
    elif status["state"] == "stale":
        st.error(f"No heartbeat for {fmt_duration(beat['age_s'])} (worker {md(beat['worker_id'])}, pid {beat['pid']} on "
                 f"{md(beat['host'])}): it has probably stopped. `selfheal daemon status` tells more.")
    else:
        st.warning(f"The worker stopped at {fmt_time(beat['last_beat'])} (pid {beat['pid']} on {md(beat['host'])}).")
    if status["pending_requests"]:
        st.caption(f"{status['pending_requests']} run-now request(s) waiting for the worker.")


def alerts_panel() -> None:
    st.subheader("Recent alerts")
    alerts = data.recent_alerts(limit=10)
    if not alerts:
        st.info("No alerts. Checks that find damage, failed heals and escalations show up here.")
        return
    st.dataframe(rows({
        "time": fmt_time(a["created_at"]), "severity": a["severity"], "kind": a["kind"], "subject": a["subject"],
        "message": a["message"], "acknowledged": f"by {a['acknowledged_by']}" if a["acknowledged"] else "no",
    } for a in alerts), hide_index=True, width="stretch")
    open_alerts = [a for a in alerts if not a["acknowledged"]]
    if open_alerts:
        choice = st.selectbox("Acknowledge alert", [a["id"] for a in open_alerts], key="ack-alert",
                              format_func=lambda i: next(text(f"#{a['id']} {a['severity']}: {a['subject']}") for a in open_alerts if a["id"] == i))
        if st.button("Acknowledge", key="ack-button"):
            actions.acknowledge_alert(choice, operator())
            st.rerun()


def rate_limit_panel() -> None:
    st.subheader("Tuning rate limits")
    limits = data.rate_limits_from_settings(ENV)
    states = data.rate_limit_states(limits=limits)
    st.caption(f"Mode **{ENV.mode}** · at most {limits.max_runs} runs per {fmt_duration(limits.window_s)}, "
               f"{fmt_duration(limits.cooldown_s)} cooldown, backoff after failures.")
    st.dataframe(rows({
        "subsystem": s["subsystem"], "runs used": f"{s['runs_used']}/{s['max_runs']}",
        "cooldown left": fmt_duration(s["cooldown_left_s"]), "backoff left": fmt_duration(s["backoff_left_s"]),
        "next allowed run": "now" if s["allowed"] else fmt_time(s["next_allowed_at"]), "state": s["reason"],
    } for s in states), hide_index=True, width="stretch")


@st.fragment(run_every=LIMITS.refresh_s)
def live_panels() -> None:
    """Re-drawn every dashboard.refresh_s seconds without rerunning the whole page."""
    fleet_tiles()
    left, right = st.columns(2)
    with left:
        worker_panel()
        rate_limit_panel()
    with right:
        alerts_panel()
    st.caption(f"Refreshed {fmt_time(data.now_utc())} · every {LIMITS.refresh_s:g} s")


st.title("Overview")
live_panels()
