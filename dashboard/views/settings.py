"""Settings: the effective configuration, read-only, with every secret masked."""

from __future__ import annotations

from dataclasses import asdict

import streamlit as st

from dashboard.views.common import dash_settings, settings

ENV = settings()

st.title("Settings")
st.write("The effective configuration of this dashboard process (defaults ← "
         f"{'`' + str(ENV.config_path) + '`' if ENV.config_path else 'no config file'} ← environment), read-only. "
         "Secrets are shown as `***`. Change the YAML file or the environment and restart to edit it.")
cols = st.columns(3)
cols[0].metric("mode", ENV.mode)
cols[1].metric("home", str(ENV.home))
cols[2].metric("vision model", ENV.vision_model.provider)
st.subheader("Configuration")
st.json(ENV.masked())
st.subheader("Dashboard")
st.json(asdict(dash_settings()))
