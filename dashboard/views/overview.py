"""Overview: what needs the operator now (open alerts, promotions waiting for review, images marked bad,
a worker-down banner), then the fleet tiles, the worker, recent alerts and the rate limits (live)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import actions, data
from dashboard.safe import md, rows
from dashboard.views.common import dash_settings, fmt_duration, fmt_time, operator, settings, status_label

ENV = settings()
LIMITS = dash_settings()
ALERT_STATE_LABELS = {"open": "🔔 open", "acknowledged": "✔ acknowledged", "resolved": "✅ resolved", "info": "ℹ️ info"}
SEVERITY_ICONS = {"critical": "🔴", "warning": "🟡", "info": "🔵"}
IMAGES_PAGE, PROMOTIONS_PAGE = "views/images.py", "views/promotions.py"


@st.fragment(run_every=2.0)
def worker_banner() -> None:
    """A red banner at the very top as soon as a worker misses two heartbeats (one cheap read every 2 s)."""
    status = data.worker_status(stale_after_s=LIMITS.worker_stale_s)
    for beat in status["down"]:
        st.error(f"**Worker down:** {md(beat['worker_id'])} (pid {beat['pid']} on {md(beat['host'])}) has not reported "
                 f"for {fmt_duration(beat['age_s'])} (expected every {fmt_duration(beat['stale_after_s'] / 2)}). "
                 "Nothing is checked or healed and requests wait; `selfheal daemon status` tells more.", icon="🚨")
    if status["state"] == "stopped" and not status["down"]:
        beat = status["beat"]
        st.error(f"**Worker stopped** at {fmt_time(beat['last_beat'])} (pid {beat['pid']} on {md(beat['host'])}): "
                 "nothing is checked until it is started again (`selfheal daemon start`).", icon="🚨")
    if status["state"] == "absent":
        st.error("**No worker** has ever reported to this database: nothing is checked. Start one with "
                 "`selfheal worker` or `selfheal daemon start`.", icon="🚨")


def _acknowledge(alert_id: int) -> None:
    try:
        actions.acknowledge_alert(alert_id, operator())
    except actions.ActionRefused as exc:
        st.session_state["overview-message"] = md(exc)


def _ago(when: Any) -> str:
    return f"{fmt_duration((data.now_utc() - when).total_seconds())} ago"


def needs_you_now() -> None:
    st.subheader("Needs you now")
    todo = data.needs_attention()
    message = st.session_state.pop("overview-message", None)
    if message:
        st.error(message)
    if not (todo["alerts"] or todo["promotions"] or todo["marked_bad"]):
        st.success("Nothing needs you now: no open alert, no promotion waiting, no image marked bad.")
        return
    for alert in todo["alerts"]:
        with st.container(border=True):
            left, mid, right = st.columns([3, 6, 1.4], vertical_alignment="center")
            label = f"{SEVERITY_ICONS.get(alert['severity'], '')} {alert['short']}"
            if alert["image_id"] is not None:
                left.page_link(IMAGES_PAGE, label=label, query_params={"image": str(alert["image_id"])},
                               help=alert["subject"])
            else:
                left.markdown(f"**{md(label)}**", help=alert["subject"])
            mid.markdown(f"{md(alert['message'])}  \n:gray[{md(alert['kind'])} · {_ago(alert['created_at'])}]")
            right.button("Acknowledge", key=f"ack-{alert['id']}", on_click=_acknowledge, args=(alert["id"],))
    for promotion in todo["promotions"]:
        change = ", ".join(f"{k.split('.', 1)[-1]} {(promotion['old_values'] or {}).get(k, '—')} → {v}"
                           for k, v in (promotion["new_values"] or {}).items())
        expires = promotion["expires_at"]
        expiry = "no expiry" if expires is None else f"expires in {fmt_duration((expires - data.now_utc()).total_seconds())}"
        with st.container(border=True):
            left, mid = st.columns([3, 7.4], vertical_alignment="center")
            left.page_link(PROMOTIONS_PAGE, label=f"✅ Promotion #{promotion['id']} waits for review",
                           query_params={"promotion": str(promotion["id"])})
            mid.markdown(f"{md(promotion['subsystem'])}: {md(change)} · **{expiry}**")
    for image in todo["marked_bad"]:
        with st.container(border=True):
            left, mid = st.columns([3, 7.4], vertical_alignment="center")
            left.page_link(IMAGES_PAGE, label=f"⛔ {image['short']}", query_params={"image": str(image["id"])},
                           help=image["path"])
            mid.markdown(f"marked bad after {image['consecutive_heal_failures']} failed heal(s): no more automatic "
                         "heals until an operator heals or re-registers it")


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
    recent = data.alerts(limit=15)
    if not recent:
        st.info("No alerts. Checks that find damage, failed heals and escalations show up here.")
        return
    table = pd.DataFrame(rows({
        "Time": fmt_time(a["created_at"]), "Severity": f"{SEVERITY_ICONS.get(a['severity'], '')} {a['severity']}",
        "Image": a["short"],
        "State": ALERT_STATE_LABELS.get(a["state"], a["state"]) + (
            f" by {a['acknowledged_by']}" if a["state"] == "acknowledged" else
            f" {fmt_time(a['resolved_at'])}" if a["state"] == "resolved" else ""),
        "Message": a["message"],
    } for a in recent))
    settled = [a["state"] != "open" for a in recent]
    # Open alerts in full colour; acknowledged, resolved and info ones greyed out.
    styled = table.style.apply(lambda row: ["color: #8a8a8a" if settled[row.name] else "" for _ in row], axis=1)
    st.dataframe(styled, hide_index=True, width="stretch",
                 column_config={"Message": st.column_config.TextColumn(width="large"),
                                "Image": st.column_config.TextColumn(help="the image's file name; the full path is on "
                                                                          "the Images page")})
    st.caption("Alerts about an image resolve themselves at its next healthy check; info alerts are events "
               "and wait for nobody. Acknowledge open ones above.")


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
    needs_you_now()
    st.subheader("Fleet")
    fleet_tiles()
    alerts_panel()
    left, right = st.columns([2, 3])
    with left:
        worker_panel()
    with right:
        rate_limit_panel()
    st.caption(f"Refreshed {fmt_time(data.now_utc())} · every {LIMITS.refresh_s:g} s")


st.title("Overview")
worker_banner()
live_panels()
