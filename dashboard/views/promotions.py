"""Promotions: the review queue with approve / reject (confirmed), old vs new values, expiry; history;
roll back an applied promotion (confirmed, audited with the operator's name)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard import actions, charts, data
from dashboard.safe import md, rows, text
from dashboard.views.common import dash_settings, fmt_duration, fmt_time, operator, settings

ENV = settings()
LIMITS = dash_settings()
CONFIRM_KEY = "confirm-promotion"
ROLLBACK_KEY = "confirm-rollback"


def draw_pending(promotion: dict[str, Any]) -> None:
    pid = promotion["id"]
    now = data.now_utc()
    expires = promotion["expires_at"]
    expiry = "no expiry" if expires is None else (
        f"expired {fmt_time(expires)}" if expires <= now else f"expires in {fmt_duration((expires - now).total_seconds())} ({fmt_time(expires)})")
    with st.container(border=True):
        st.markdown(f"**Promotion #{pid}** · {md(promotion['subsystem'])} · proposed {fmt_time(promotion['created_at'])} · {expiry}")
        st.caption(f"run #{promotion['run_id'] or '—'} · candidate #{promotion['candidate_id'] or '—'}"
                   + (f" · score {promotion['score']:.3f}" if promotion["score"] is not None else ""))
        if promotion["reason"]:
            st.write(md(promotion["reason"]))
        changes = data.value_changes(promotion["old_values"], promotion["new_values"])
        st.dataframe(rows(changes.to_dict("records")), hide_index=True, width="stretch")
        intent = promotion.get("intent")
        breakdown = promotion["score_breakdown"] or {}
        if intent or breakdown.get("origin"):
            with st.expander("Why this change: the failure and the numbers behind it", expanded=True):
                if intent:
                    st.write(f"Failure class **{md(intent['error_class'])}**"
                             + (f" in {md(intent['source'])}" if intent.get("source") else "")
                             + (f" · {md(', '.join(f'{k}={v}' for k, v in (intent['values'] or {}).items()))}"
                                if intent.get("values") else ""))
                    lines = [e for e in intent.get("evidence") or [] if isinstance(e, dict)]
                    if lines:
                        st.code(text("\n".join(f"{e.get('line', '?')}: {e.get('text', '')}" for e in lines[:20])),
                                language=None)
                if breakdown.get("origin"):
                    st.caption(f"Candidate: {md(breakdown['origin'])}")
        evidence = data.canary_evidence(breakdown)
        if evidence:
            baseline = "against the baseline run" if breakdown.get("baseline_ran") else "against the targets (no baseline run)"
            st.caption(f"Canary evidence, judged {baseline}:")
            st.dataframe(rows(evidence), hide_index=True, width="stretch")
        if promotion["score_breakdown"]:
            st.plotly_chart(charts.score_breakdown_figure(promotion["score_breakdown"]), key=f"promo-score-{pid}")
            if promotion["score_breakdown"].get("why"):
                st.caption(md(promotion["score_breakdown"]["why"]))
        st.text_input("Note for the audit trail (optional)", key=f"note-{pid}")
        pending = st.session_state.get(CONFIRM_KEY)
        if pending and pending[0] == pid:
            verb = "approve" if pending[1] else "reject"
            st.warning(f"{verb.capitalize()} promotion #{pid} as {md(operator())}? "
                       + (CONFIRM_APPROVE if pending[1] else "Nothing is changed; the decision is kept in the audit trail."))
            yes, no = st.columns(2)
            # Callbacks run at the start of the next run, before the queue is read again: a promotion
            # someone else decided meanwhile is reported instead of its card (and the click) vanishing.
            yes.button(f"Confirm {verb}", key=f"confirm-{pid}", type="primary", on_click=_decide, args=(pid, pending[1]))
            no.button("Cancel", key=f"cancel-{pid}", on_click=_cancel)
        else:
            approve, reject = st.columns(2)
            approve.button("Approve", key=f"approve-{pid}", type="primary", on_click=_ask, args=(pid, True))
            reject.button("Reject", key=f"reject-{pid}", on_click=_ask, args=(pid, False))


CONFIRM_APPROVE = ("Approving applies the change at once: this page writes the new values to the target config file "
                   "(a backup is kept for Roll back) and runs the reload command.")


def _ask(pid: int, approve: bool) -> None:
    current = data.promotion(None, pid)
    if current is None or current["status"] != "pending_review":
        _report_late(pid, approve, current)
        return
    st.session_state[CONFIRM_KEY] = (pid, approve)


def _cancel() -> None:
    st.session_state.pop(CONFIRM_KEY, None)


def _decide(pid: int, approve: bool) -> None:
    st.session_state.pop(CONFIRM_KEY, None)
    note = st.session_state.get(f"note-{pid}", "")
    try:
        row = actions.decide_promotion(pid, approve, operator(), reason=note)
    except actions.ActionRefused as exc:
        current = data.promotion(None, pid)
        if current is not None and current["status"] != "pending_review":
            _report_late(pid, approve, current)
        else:
            st.session_state["promotion-message"] = ("error", md(exc))
        return
    if approve and row["status"] != "applied":
        st.session_state["promotion-message"] = (
            "error", f"Promotion #{pid} approved by {md(operator())} but {md(row['status'])}: {md(row.get('reason') or '')}")
    else:
        st.session_state["promotion-message"] = (
            "success", f"Promotion #{pid} {'approved and applied' if approve else 'rejected'} by {md(operator())}.")


def _report_late(pid: int, approve: bool, current: dict[str, Any] | None) -> None:
    """Another operator (or the expiry) decided first: say so, and that this decision was not recorded."""
    verb = "approval" if approve else "rejection"
    if current is None:
        st.session_state["promotion-message"] = ("error", f"Promotion #{pid} no longer exists; your {verb} was not recorded.")
        return
    who = f" by {md(current['decided_by'])}" if current.get("decided_by") else ""
    when = current.get("decided_at") or current.get("applied_at")
    st.session_state["promotion-message"] = (
        "warning", f"Promotion #{pid} was already {md(data.PROMOTION_WORDS.get(current['status'], current['status']))}"
        f"{who}{' at ' + fmt_time(when) if when else ''}: your {verb} was not recorded.")


def draw_applied(promotion: dict[str, Any]) -> None:
    """An applied promotion with its "Roll back" action (healing.tuning.promotions.rollback_promotion)."""
    from healing.errors import SelfHealError
    from healing.tuning.promotions import rollback_promotion

    pid = promotion["id"]
    change = ", ".join(f"{k.split('.', 1)[-1]} {promotion['old_values'].get(k) if promotion['old_values'] else '—'} → {v}"
                       for k, v in (promotion["new_values"] or {}).items())
    with st.container(border=True):
        st.markdown(f"**Promotion #{pid}** · {md(promotion['subsystem'])} · applied {fmt_time(promotion['applied_at'])} · "
                    f"{md(change)}")
        if st.session_state.get(ROLLBACK_KEY) == pid:
            note = st.text_input("Why (kept in the audit trail)", key=f"rollback-note-{pid}")
            st.warning(f"Roll back promotion #{pid} as {md(operator())}? The target file is restored from the backup "
                       "taken at the apply and the reload command runs.")
            yes, no = st.columns(2)
            if yes.button("Confirm roll back", key=f"confirm-rollback-{pid}", type="primary"):
                st.session_state.pop(ROLLBACK_KEY, None)
                try:
                    done = rollback_promotion(None, pid, operator(), reason=" ".join(note.split()) or None, settings=ENV)
                except SelfHealError as exc:
                    st.session_state["promotion-message"] = ("error", md(exc))
                else:
                    problem = done["rollback"]["reload_problem"]
                    st.session_state["promotion-message"] = (
                        ("error", f"Promotion #{pid} rolled back by {md(operator())}, but {md(problem)}.") if problem
                        else ("success", f"Promotion #{pid} rolled back by {md(operator())}."))
                st.rerun()
            if no.button("Cancel", key=f"cancel-rollback-{pid}"):
                st.session_state.pop(ROLLBACK_KEY, None)
                st.rerun()
        elif st.button("Roll back", key=f"rollback-{pid}"):
            st.session_state[ROLLBACK_KEY] = pid
            st.rerun()


@st.fragment(run_every=LIMITS.refresh_s)
def live() -> None:
    """The queue, the decisions and the applied promotions, re-read every dashboard.refresh_s seconds
    (a promotion another operator decided, or a new one, shows up without a reload); the outcome of
    this operator's own decision is shown here, at the top."""
    message = st.session_state.pop("promotion-message", None)
    if message:
        {"success": st.success, "warning": st.warning}.get(message[0], st.error)(message[1])
    stale = st.session_state.get(CONFIRM_KEY)
    if stale:  # a confirmation left open while someone else decided: report it, drop the question
        current = data.promotion(None, stale[0])
        if current is None or current["status"] != "pending_review":
            st.session_state.pop(CONFIRM_KEY, None)
            _report_late(stale[0], stale[1], current)
            message = st.session_state.pop("promotion-message")
            st.warning(message[1])

    queue = data.promotions(status="pending_review")
    linked = st.query_params.get("promotion")  # the Overview's link: that promotion first
    if linked and linked.isdigit():
        queue.sort(key=lambda p: p["id"] != int(linked))
    st.subheader(f"Waiting for review ({len(queue)})")
    if not queue:
        hint = ("In prod mode, winning tuning candidates wait here for approval." if ENV.mode == "prod"
                else f"Mode is {ENV.mode}: winners are not queued for review in this mode.")
        st.info(f"Nothing to review. {hint}")
    for item in queue:
        draw_pending(item)

    st.subheader("Decided")
    history = [p for p in data.promotions(limit=100) if p["status"] != "pending_review"]
    if not history:
        st.caption("No decisions yet.")
    else:
        st.dataframe(rows({
            "#": p["id"], "subsystem": p["subsystem"], "status": p["status"], "decided by": p["decided_by"] or "—",
            "decided": fmt_time(p["decided_at"]), "applied": fmt_time(p["applied_at"]), "note": p["reason"] or "—",
            "change": ", ".join(f"{k}: {p['old_values'].get(k) if p['old_values'] else '—'} → {v}"
                                for k, v in (p["new_values"] or {}).items()),
        } for p in history), hide_index=True, width="stretch")

    applied = [p for p in history if p["status"] == "applied"]
    if applied:
        st.subheader(f"Applied ({len(applied)})")
        for item in applied:
            draw_applied(item)


st.title("Promotions")
live()
