"""Settings: the effective configuration as one grouped, read-only table (tuning and dashboard sections
included), every secret masked and redacted."""

from __future__ import annotations

from dataclasses import asdict

import streamlit as st

from dashboard.safe import md, rows
from dashboard.settings_table import settings_rows
from dashboard.views.common import dash_settings, settings

ENV = settings()

st.title("Settings")
st.write("The effective configuration of this dashboard process (defaults ← "
         f"{md(ENV.config_path) if ENV.config_path else 'no config file'} ← environment), read-only. "
         "Secrets are shown as `***`, also inside URLs (passwords and query values). Change the YAML file or "
         "the environment and restart to edit it.")
cols = st.columns(3)
cols[0].metric("mode", md(ENV.mode))
cols[1].metric("home", md(ENV.home))
cols[2].metric("vision model", md(ENV.vision_model.provider))
st.subheader("Configuration")
table = settings_rows(ENV, asdict(dash_settings()))
sections = sorted({r["Section"] for r in table})
chosen = st.multiselect("Sections", sections, key="settings-sections", placeholder="all sections")
search = st.text_input("Setting contains", key="settings-search").strip().lower()
shown = [r for r in table if (not chosen or r["Section"] in chosen) and (not search or search in r["Setting"].lower())]
st.dataframe(rows(shown), hide_index=True, width="stretch", height=min(900, 40 + 35 * max(1, len(shown))),
             column_config={"Value": st.column_config.TextColumn(width="large")})
st.caption(f"{len(shown)} of {len(table)} settings.")
