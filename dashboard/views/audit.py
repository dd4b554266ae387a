"""Audit: filterable, paginated history; CSV export; the hash chain's verification status."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import streamlit as st

from dashboard import data, exports
from dashboard.chain import ChainVerifier
from dashboard.safe import md, rows, text, value
from dashboard.views.common import dash_settings, fmt_time

LIMITS = dash_settings()
ALL = "(all kinds)"
ALL_ACTORS = "(all actors)"


@st.cache_resource(show_spinner=False)
def _verifier(url: str) -> ChainVerifier:
    """One background verifier per database and dashboard process, shared by every session."""
    return ChainVerifier(url)


@st.fragment(run_every=2.0)
def draw_chain_status() -> None:
    """The last verification's verdict; polls while a verification runs in the background."""
    from healing.config import load_settings

    verifier = _verifier(load_settings().database_url)
    state = verifier.latest(max_age_s=LIMITS.chain_verify_max_age_s, wait_s=0.5)
    report = state["report"]
    if state["error"]:
        st.error(f"The audit chain could not be verified: {md(state['error'])}")
    if report is None:
        st.info("Verifying the audit chain in the background …", icon="⏳")
    elif report["ok"]:
        head = data.audit_head()
        newer = head["seq"] - report["events"]
        st.success(f"{md(report['summary'])} (verified {fmt_time(report['verified_at'])}"
                   + (f"; {newer} newer event(s) are checked on the next verification" if newer > 0 else "") + ")",
                   icon="🔒")
    else:
        st.error(f"{md(report['summary'])} (verified {fmt_time(report['verified_at'])}). Run `selfheal audit verify` "
                 "and compare with a backup; the events after the break cannot be trusted.", icon="⚠️")
    if report is not None and state["running"]:
        st.caption("A newer verification is running …")
    if st.button("Verify again", key="reverify", disabled=state["running"]):
        verifier.start()
        st.rerun(scope="fragment")


def _day_bounds(days: tuple) -> tuple[datetime | None, datetime | None]:
    """Inclusive UTC date range → [start, end) datetimes."""
    if len(days) != 2:
        return None, None
    start = datetime.combine(days[0], time.min, tzinfo=UTC)
    end = datetime.combine(days[1], time.min, tzinfo=UTC) + timedelta(days=1)
    return start, end


st.title("Audit trail")
draw_chain_status()

kinds = data.audit_kinds()
if not kinds:
    st.info("The audit trail is empty: checks, heals, requests, tuning runs and operator decisions are recorded here.")
    st.stop()

cols = st.columns([2, 3, 2, 3])
kind_choice = cols[0].selectbox("Kind", [ALL, *kinds], key="audit-kind")
subject = cols[1].text_input("Subject contains (file name, path, subsystem …)", key="audit-subject").strip() or None
actor_choice = cols[2].selectbox("Actor", [ALL_ACTORS, *data.audit_actors()], key="audit-actor")
hide_routine = cols[2].toggle("Hide routine checks", key="audit-hide-routine",
                              help="Leaves out the periodic check events, so that decisions, heals and alerts stand out.")
use_dates = cols[3].toggle("Limit to a date range (UTC)", key="audit-use-dates")
start = end = None
if use_dates:
    today = datetime.now(UTC).date()
    days = cols[3].date_input("Days", value=(today - timedelta(days=7), today), key="audit-days")
    start, end = _day_bounds(tuple(days) if isinstance(days, tuple | list) else (days, days))
kind = None if kind_choice == ALL else kind_choice
actor = None if actor_choice == ALL_ACTORS else actor_choice
filters = data.audit_filter_args(kind=kind, subject=subject, actor=actor, hide_routine=hide_routine, start=start, end=end)

page_size = LIMITS.page_size
total = data.audit_count(**filters)
pages = max(1, -(-total // page_size))
page = int(st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, step=1, key="audit-page"))
events = data.audit_page(**filters, offset=(page - 1) * page_size, limit=page_size)
st.caption(f"{total:,} matching event(s), newest first (by sequence number); page {page} of {pages}.")
if not events:
    st.info("No event matches these filters.")
else:
    st.dataframe(rows({
        "Seq": r["seq"], "Time": fmt_time(r["created_at"]), "Kind": r["kind"], "Subject": r["subject"],
        "Actor": r["actor"], "Details": data.payload_summary(r["payload"]), "Hash": r["hash"][:12],
    } for r in events), hide_index=True, width="stretch",
        column_config={"Seq": st.column_config.NumberColumn(width="small"),
                       "Details": st.column_config.TextColumn(width="large"),
                       "Subject": st.column_config.TextColumn(width="medium")})
    by_seq = {r["seq"]: r for r in events}
    chosen = st.selectbox("Full payload of event", list(by_seq), format_func=lambda seq: f"seq {seq} · "
                          f"{by_seq[seq]['kind']} · {by_seq[seq]['subject']}", key="audit-detail", index=None,
                          placeholder="choose an event of this page")
    if chosen is not None:
        st.json(value(by_seq[chosen]["payload"]))

shown = min(total, LIMITS.csv_export_max)
# Generated on the click, for this logged-in session only, and gone from its URL soon after
# (dashboard.exports); 100,000 rows are also too much work for every rerun of the page.
st.download_button(f"Download CSV ({shown:,} events)",
                   exports.deferred(lambda: text(data.audit_csv(**filters, max_rows=LIMITS.csv_export_max)),
                                    LIMITS.export_ttl_s),
                   file_name="selfheal-audit.csv", mime="text/csv", key="csv-download")
