"""Settings: the effective configuration, read-only, with every secret masked."""

from __future__ import annotations

from dataclasses import asdict

import streamlit as st

from dashboard.safe import md, value
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
st.json(value(ENV.masked()))
st.subheader("Dashboard")
st.json(asdict(dash_settings()))
