"""Analyze: upload a .rts.png or PNG, run every analysis, see overlays and findings, download the report."""

from __future__ import annotations

import json

import streamlit as st

from dashboard import exports
from dashboard.pictures import base_picture, draw_findings, entropy_picture, magnitude_picture, png_bytes
from dashboard.safe import md, rows, value
from dashboard.upload import ENTROPY_TILE, UploadAnalysis, UploadRefused, analyze_upload
from dashboard.views.common import dash_settings, findings_rows, settings, status_label, verdict_line

ENV = settings()
LIMITS = dash_settings()
NO_MODEL = "(statistics only)"


def run_analysis(name: str, content: bytes, model: str | None) -> UploadAnalysis | None:
    """Analyse once per (file, model) and keep the result for this session's reruns."""
    import hashlib

    key = (hashlib.sha256(content).hexdigest(), name, model)
    cached = st.session_state.get("upload-analysis")
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        with st.spinner("Analysing …"):
            result = analyze_upload(name, content, ENV, model=model)
    except UploadRefused as exc:
        st.session_state.pop("upload-analysis", None)  # the refusal replaces the previous result
        st.error(f"Upload refused: {md(exc)}")
        return None
    st.session_state["upload-analysis"] = (key, result)
    return result


def draw(result: UploadAnalysis) -> None:
    st.subheader(f"{md(result.filename)}: {status_label(result.status)}")
    st.caption(f"{result.size:,} bytes · sha256 {result.sha256}")
    if result.error:
        st.error(md(result.error))
    check = result.check
    hc = ENV.health_check
    st.markdown(f"**{md(verdict_line(check, warning=hc.warning_threshold, critical=hc.critical_threshold))}**")
    if check.get("recommendation"):
        st.write(f"Recommendation: {md(check['recommendation'])}")
    metrics = check.get("metrics") or {}
    if metrics:
        cols = st.columns(4)
        for col, key in zip(cols, ("hash_verified", "anomaly_score", "grid_size", "data_size"), strict=True):
            metric = metrics.get(key)
            col.metric(key.replace("_", " "), "—" if metric is None else md(metric))

    st.subheader("Findings")
    findings = result.findings
    if findings:
        st.dataframe(rows(findings_rows(findings)), hide_index=True, width="stretch")
    else:
        st.success("No findings.")

    if result.pixels is not None and result.maps:
        st.subheader("Overlays")
        tabs = st.tabs(["Findings", "Entropy", "Edges", "Fourier", "Clusters"])
        base, scale = base_picture(result.pixels)
        height, width = result.pixels.shape[:2]
        with tabs[0]:
            regions = sum(1 for f in findings if f.get("region"))
            st.image(png_bytes(draw_findings(base, scale, findings)), output_format="PNG",
                     caption=f"{width}×{height} pixels, opaque (alpha is payload); {regions} finding region(s) "
                             "outlined and numbered as in the findings table")
        with tabs[1]:
            st.image(png_bytes(entropy_picture(result.maps["entropy"])), output_format="PNG",
                     caption=f"Entropy per {ENTROPY_TILE}×{ENTROPY_TILE}-pixel block, viridis from 0 (dark purple) to "
                             "8 bits/byte (yellow)")
        with tabs[2]:
            st.image(png_bytes(magnitude_picture(result.maps["edges"])), output_format="PNG",
                     caption="Edge magnitude (Sobel on the luminance), white = strongest 0.5 %")
        with tabs[3]:
            st.image(png_bytes(magnitude_picture(result.maps["fourier"])), output_format="PNG",
                     caption="Fourier spectrum, log magnitude, zero frequency in the centre")
        with tabs[4]:
            clusters = result.maps["clusters"].astype(float)
            top = max(1.0, float(clusters.max()))
            st.image(png_bytes(entropy_picture(clusters * (8.0 / top))), output_format="PNG",
                     caption=f"Blocks grouped by (entropy, mean value) into {int(top) + 1} clusters, one colour each")
        with st.expander("Analysis summary"):
            st.json(value(result.summaries))

    if result.integrity:
        with st.expander("Integrity (codec verify)"):
            st.json(value(result.integrity))
    for vision in result.vision:
        with st.expander(f"Vision model {md(vision['provider'])}: {md(vision['status'])}"):
            st.json(value(vision))
    # Built on click and only for this logged-in session (dashboard.exports), redacted like the page.
    st.download_button("Download JSON report",
                       exports.deferred(lambda: json.dumps(value(result.report()), indent=2, sort_keys=True, default=str),
                                        LIMITS.export_ttl_s),
                       file_name=f"{result.filename}.report.json", mime="application/json", key="download-report")


st.title("Analyze an image")
st.write(f"Upload a PixelRTS `.rts.png` or a plain PNG (at most {LIMITS.max_upload_mb} MiB and "
         f"{LIMITS.max_upload_pixels:,} pixels). It is analysed here and not registered or stored.")
allowed = [name for name in ENV.vision_model.upload_allowlist]
model_choice = st.selectbox("Vision model", [NO_MODEL, *allowed], key="vision-model",
                            help="Only models on vision_model.upload_allowlist can be chosen; their endpoints come "
                                 "from the server's configuration.")
# Twice the limit in the widget (and the server, dashboard.commands): an over-size file reaches this page
# and is refused with a visible error, instead of only a tooltip while the previous result stays shown.
uploaded = st.file_uploader("Image", type=["png"], key="upload", max_upload_size=2 * LIMITS.max_upload_mb)
if uploaded is None:
    st.info("Choose a file to start. The report lists findings with their byte ranges and pixel regions.")
    st.stop()
if uploaded.size > LIMITS.max_upload_bytes:
    # Checked before reading the bytes; analyze_upload checks again on the data itself.
    st.session_state.pop("upload-analysis", None)
    st.error(f"Upload refused: the file is {uploaded.size / 1048576:.1f} MiB; the dashboard analyses at most "
             f"{LIMITS.max_upload_mb} MiB (dashboard.max_upload_mb).")
    st.stop()
analysis = run_analysis(uploaded.name, uploaded.getvalue(), None if model_choice == NO_MODEL else model_choice)
if analysis is not None:
    draw(analysis)
