"""Images: registered images with their latest status; detail view with overlays, findings, trends, actions."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import actions, charts, data
from dashboard.pictures import base_picture, draw_findings, entropy_picture, magnitude_picture, png_bytes
from dashboard.safe import md, rows, text, value
from dashboard.upload import ENTROPY_TILE, block_entropy_map, edge_magnitude
from dashboard.views.common import (
    dash_settings,
    findings_rows,
    fmt_time,
    operator,
    settings,
    status_label,
    verdict_line,
)

ENV = settings()
LIMITS = dash_settings()


@st.cache_data(show_spinner=False, max_entries=8)
def _image_pictures(path: str, mtime_ns: int, size: int, max_pixels: int) -> dict[str, Any]:
    """The image, its entropy and edge maps as small opaque pictures (dashboard.pictures), keyed by
    mtime and size so a change re-reads it. Only these pictures are cached, never the full pixels."""
    from healing.pixelrts import read_image

    pixels = read_image(path, max_pixels=max_pixels).pixels
    base, scale = base_picture(pixels)
    entropy = block_entropy_map(pixels)
    edges = edge_magnitude(pixels)
    return {"base": base, "scale": scale, "height": pixels.shape[0], "width": pixels.shape[1],
            "entropy": png_bytes(entropy_picture(entropy)), "entropy_blocks": entropy.shape,
            "entropy_range": (float(entropy.min()), float(entropy.max())), "edges": png_bytes(magnitude_picture(edges)),
            "plain": png_bytes(base)}


def draw_overlays(path: str, findings: list[dict[str, Any]]) -> None:
    from healing.errors import SelfHealError

    try:
        stat = os.stat(path)
    except OSError as exc:
        st.warning(f"Cannot read {md(path)}: {md(exc.strerror or exc)}. The worker will report it on its next check.")
        return
    try:
        maps = _image_pictures(path, stat.st_mtime_ns, stat.st_size, ENV.pixelrts.max_pixels)
    except SelfHealError as exc:
        st.warning(f"Cannot draw {md(path)}: {md(exc)}")
        return
    shown = f"{maps['width']}×{maps['height']} pixels" + (
        f", shown at {maps['base'].shape[1]}×{maps['base'].shape[0]}" if maps["scale"] < 1 else "")
    tabs = st.tabs(["Findings overlay", "Entropy", "Edges"])
    with tabs[0]:
        regions = sum(1 for f in findings if f.get("region"))
        picture = png_bytes(draw_findings(maps["base"], maps["scale"], findings)) if regions else maps["plain"]
        st.image(picture, output_format="PNG",
                 caption=f"{shown}; opaque (alpha is payload); {regions} finding region(s) outlined and numbered "
                         "as in the findings table")
    with tabs[1]:
        low, high = maps["entropy_range"]
        rows_, cols_ = maps["entropy_blocks"]
        st.image(maps["entropy"], output_format="PNG",
                 caption=f"Entropy per {ENTROPY_TILE}×{ENTROPY_TILE}-pixel block ({cols_}×{rows_} blocks), viridis "
                         f"from 0 (dark purple) to 8 bits/byte (yellow); this image: {low:.2f} … {high:.2f}")
    with tabs[2]:
        st.image(maps["edges"], output_format="PNG",
                 caption="Edge magnitude (Sobel on the luminance), white = strongest 0.5 %")


def draw_actions(image: dict[str, Any]) -> None:
    st.subheader("Actions")
    st.caption("Requests are carried out by the worker; their outcome appears below and in the audit trail.")
    message = st.session_state.pop("image-action-message", None)
    if message:
        (st.success if message[0] == "success" else st.info)(message[1])
    pending = st.session_state.get("confirm-image-action")
    columns = st.columns(3)
    labels = {"check": "Check now", "heal": "Heal now", "accept_change": "Accept change (new baseline)"}
    for column, kind in zip(columns, labels, strict=True):
        if column.button(labels[kind], key=f"action-{kind}"):
            if kind == "check":
                _submit(kind, image)
            else:
                st.session_state["confirm-image-action"] = (kind, image["path"])
                st.rerun()
    if pending and pending[1] == image["path"]:
        kind = pending[0]
        explain = {"heal": "heal the file: rebuild it from its parity, else restore its golden copy "
                           "(the current file is quarantined first)",
                   "accept_change": "accept the current file as the new golden copy and baseline"}[kind]
        st.warning(f"Really {explain}?")
        yes, no = st.columns(2)
        if yes.button("Confirm", key="confirm-yes", type="primary"):
            st.session_state.pop("confirm-image-action", None)
            _submit(kind, image)
        if no.button("Cancel", key="confirm-no"):
            st.session_state.pop("confirm-image-action", None)
            st.rerun()


def _submit(kind: str, image: dict[str, Any]) -> None:
    """Queue the request, then rerun the page: its detail refreshes every 2 s until the worker is done."""
    try:
        request = actions.request_run(kind, image["path"], operator())
    except actions.ActionRefused as exc:
        st.error(md(exc))
        return
    if request["duplicate"]:
        message = ("info", f"A {kind} request (#{request['id']}) for this image is already waiting for the worker.")
    else:
        message = ("success", f"Requested {kind.replace('_', ' ')} (#{request['id']}); the worker picks it up within "
                              "seconds — its progress and outcome appear below.")
    st.session_state["image-action-message"] = message
    st.session_state[f"image-busy-{image['id']}"] = True
    st.rerun()


def draw_detail(image_id: int) -> None:
    """The image's detail in a fragment that re-reads it every 2 s while one of its requests waits or
    runs (its progress and outcome appear in place), else every dashboard.refresh_s seconds."""
    busy = st.session_state.get(f"image-busy-{image_id}", False)

    @st.fragment(run_every=2.0 if busy else LIMITS.refresh_s)
    def live() -> None:
        now_busy = _draw_detail(image_id)
        if now_busy != busy:  # switch the refresh pace: a full rerun re-creates the fragment
            st.session_state[f"image-busy-{image_id}"] = now_busy
            st.rerun()

    live()


def parity_line(image: dict[str, Any]) -> str:
    """One line on the image's parity (issue 14): present, overhead, what it can rebuild, last verified."""
    from healing.images.parity import parity_status

    try:
        p = parity_status(image, golden_dir=ENV.golden_dir)
    except Exception as exc:  # a broken parity file must not take the page down; say what is wrong
        return f"Parity: unreadable ({' '.join(str(exc).split())[:160]})"
    if not p["present"]:
        problem = p.get("problem")
        return f"Parity: damaged or unreadable ({problem})" if problem else \
            "Parity: none (heals need the golden copy; `selfheal parity create` adds it)"
    verified = fmt_time(p["last_verified"]) if p.get("last_verified") else "never"
    state = "intact" if p.get("parity_intact", True) else "DAMAGED (some shards are erasures)"
    return (f"Parity: {state}, {p['overhead_percent']:.2f} % of the file, rebuilds a burst of up to "
            f"{p['recoverable_burst_bytes']:,} bytes without the golden copy; last verified {verified}")


def _draw_detail(image_id: int) -> bool:
    """Draw the detail; True while a request for this image is pending or running."""
    detail = data.image_detail(image_id=image_id)
    if detail is None:
        st.error(f"Image {image_id} is no longer registered.")
        return False
    image, check = detail["image"], detail["latest_check"]
    st.header(md(image["name"] or os.path.basename(image["path"])))
    st.caption(md(image["path"]))
    columns = st.columns(4)
    columns[0].metric("status", status_label(image["last_status"]))
    columns[1].metric("last check", fmt_time(image["last_checked_at"]))
    columns[2].metric("critical image", "yes" if image["critical"] else "no")
    columns[3].metric("auto-heal", "on" if image["auto_heal_enabled"] else "off")
    if image["marked_bad"]:
        st.error(f"Marked bad after {image['consecutive_heal_failures']} failed heal(s): operator attention needed.")
    st.caption(md(parity_line(image)))

    draw_actions(image)
    now = data.now_utc()
    recent = detail["requests"][:3]
    for request in recent:  # the newest requests' progress and outcome, in place
        icon, line = data.request_progress(request, now).split(" ", 1)
        if request["status"] in ("pending", "running"):
            st.info(md(line), icon=icon)
        elif request["status"] == "failed":
            st.error(md(line), icon=icon)
        elif request is recent[0]:
            st.success(md(line), icon=icon)
        else:
            st.caption(f"{icon} {md(line)}")
    busy = any(r["status"] in ("pending", "running") for r in detail["requests"])

    if check is None:
        st.info("This image has not been checked yet; press \"Check now\" or wait for the worker's interval.")
        findings: list[dict[str, Any]] = []
    else:
        findings = list(check["findings"] or [])
        st.subheader("Latest check")
        hc = ENV.health_check
        st.markdown(f"**{md(verdict_line(check, warning=hc.warning_threshold, critical=hc.critical_threshold))}**")
        st.write(f"{status_label(check['status'])} · confidence {check['confidence']:.2f} · "
                 f"{check['duration_ms']:.0f} ms · {fmt_time(check['created_at'])}"
                 + (" · analysis reused (file unchanged)" if check["reused_analysis"] else ""))
        if check["recommendation"]:
            st.write(f"Recommendation: {md(check['recommendation'])}")
        if findings:
            st.dataframe(rows(findings_rows(findings)), hide_index=True, width="stretch")
        else:
            st.success("No findings.")
        with st.expander("Metrics"):
            st.json(value(check["metrics"] or {}))

    st.subheader("Overlays")
    if st.toggle("Show the image and its overlays", value=True, key="show-overlays"):
        draw_overlays(image["path"], findings)

    st.subheader("History")
    history = detail["history"]
    if len(history) < 2:
        st.info("The status timeline appears after two checks.")
    else:
        st.plotly_chart(charts.status_timeline_figure(history), key="status-timeline")
        verified = check is not None and (check.get("metrics") or {}).get("hash_verified") is True
        label = ("Statistics (not used for this image: its payload sha256 decides)" if verified
                 else "Statistics (they decide for this image: it has no payload hash)")
        with st.expander(label, expanded=not verified):
            hc = ENV.health_check
            cols = st.columns(3)
            cols[0].plotly_chart(charts.trend_figure(history, "mean_entropy"), key="trend-entropy")
            cols[1].plotly_chart(charts.trend_figure(history, "anomaly_score", warning=hc.warning_threshold,
                                                     critical=hc.critical_threshold), key="trend-anomaly")
            cols[2].plotly_chart(charts.trend_figure(history, "duration_ms"), key="trend-duration")

    left, right = st.columns(2)
    with left:
        st.subheader("Healing actions")
        if detail["heals"]:
            st.dataframe(rows({"time": fmt_time(h["created_at"]), "action": h["action"], "outcome": h["outcome"],
                               "quarantine": h["quarantine_path"] or "—"} for h in detail["heals"]), hide_index=True)
        else:
            st.caption("None yet.")
    with right:
        st.subheader("Requests")
        if detail["requests"]:
            st.dataframe(rows({"#": r["id"], "kind": r["kind"], "status": r["status"], "by": r["requested_by"],
                               "requested": fmt_time(r["created_at"]), "finished": fmt_time(r["finished_at"])}
                              for r in detail["requests"]), hide_index=True)
        else:
            st.caption("None yet.")
    return busy


PAGE_SIZE = 50

st.title("Images")
if data.fleet()["total"] == 0:
    st.info("No images are registered yet. Register one with `selfheal register IMAGE.rts.png [--critical]`, "
            "or try an image without registering it on the Analyze page.")
    st.stop()

filter_cols = st.columns([3, 3, 1])
status_filter = filter_cols[0].multiselect("Status", ["healthy", "warning", "critical", "unknown"], key="status-filter")
contains = filter_cols[1].text_input("Name or path contains", key="image-contains").strip() or None
frame, total = data.images_page(statuses=status_filter or None, contains=contains, offset=0, limit=1)
pages = max(1, -(-total // PAGE_SIZE))
page = int(filter_cols[2].number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, step=1,
                                       key="image-page"))
frame, total = data.images_page(statuses=status_filter or None, contains=contains, offset=(page - 1) * PAGE_SIZE,
                                limit=PAGE_SIZE)
st.caption(f"{total:,} image(s) match; page {page} of {pages}, by path.")
if not frame.empty:
    st.dataframe(pd.DataFrame({
        "Name": [text(n) if isinstance(n, str) and n else text(data.short_name(p)) for n, p in zip(frame["name"], frame["path"], strict=True)],
        "Status": frame["last_status"].map(status_label),
        "Last check": frame["last_checked_at"].map(lambda t: fmt_time(t) if t is not None and t == t else "—"),
        "Findings": frame["last_findings_count"],
        "Check time (ms)": frame["last_duration_ms"],
        "Critical": frame["critical"], "Auto-heal": frame["auto_heal_enabled"], "Marked bad": frame["marked_bad"],
        "Path": frame["path"].map(text),
    }), hide_index=True, width="stretch", height=min(400, 40 + 35 * len(frame)),
        column_config={"Check time (ms)": st.column_config.NumberColumn(format="%.0f"),
                       "Path": st.column_config.TextColumn(width="large")})
labels = dict(zip(frame["id"], (frame["name"].fillna(frame["path"]) + "  —  " + frame["path"]).map(text), strict=True))
wanted = st.query_params.get("image")  # a link from the Overview (?image=ID) chooses the image once
if wanted and wanted.isdigit() and st.session_state.get("image-link-seen") != wanted:
    st.session_state["image-link-seen"] = wanted
    label = data.image_label(image_id=int(wanted))
    if label is None:
        st.warning(f"Image {int(wanted)} is not registered.")
    else:
        st.session_state["image-linked"] = (int(wanted), text(label))
        st.session_state["image-select"] = int(wanted)
linked = st.session_state.get("image-linked")
if linked and linked[0] not in labels:  # the linked image stays choosable when it is on another page
    labels = {linked[0]: linked[1], **labels}
if not labels:
    st.info("No image matches these filters.")
    st.stop()
if st.session_state.get("image-select") not in labels:
    st.session_state.pop("image-select", None)
selected = st.selectbox("Image details", list(labels), format_func=lambda i: labels[i], key="image-select")
st.query_params["image"] = str(int(selected))  # the address names the image shown: a reload or a shared link keeps it
st.session_state["image-link-seen"] = str(int(selected))
draw_detail(int(selected))
