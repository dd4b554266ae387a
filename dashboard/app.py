"""The selfheal operator dashboard: login gate, then the router (`streamlit run dashboard/app.py`).

`selfheal dashboard [--host H] [--port P]` starts this file. Pages live in dashboard/views/, one
file per page; they only draw, calling dashboard.data (reads), dashboard.actions (operator
decisions written as rows for the worker) and dashboard.charts (Plotly figures).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run` puts this file's folder on sys.path, not the project root; make the packages
# importable when the project is used from a checkout rather than pip-installed.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from dashboard import auth  # noqa: E402

st.set_page_config(page_title="selfheal", page_icon="🩺", layout="wide")


@st.cache_resource(show_spinner=False)
def _schema_ready(url: str) -> str:
    """Bring the database to the current schema once per process and URL (idempotent at head)."""
    from storage.migrate import upgrade

    return upgrade(url)


def main() -> None:
    from dashboard.safe import md
    from healing.config import load_settings
    from healing.errors import SelfHealError
    from healing.redaction import install_log_redaction

    install_log_redaction()  # this process logs too (Streamlit's and our loggers): never a secret

    try:
        settings = load_settings()
        _schema_ready(settings.database_url)  # before the login: the throttle's table must exist
    except SelfHealError as exc:
        st.error(f"selfheal: {md(exc)}")
        st.stop()
    pages = [
        st.Page("views/overview.py", title="Overview", icon="🩺", url_path="overview", default=True),
        st.Page("views/images.py", title="Images", icon="🖼️", url_path="images"),
        st.Page("views/analyze.py", title="Analyze", icon="🔬", url_path="analyze"),
        st.Page("views/tuning.py", title="Config tuning", icon="🎛️", url_path="tuning"),
        st.Page("views/promotions.py", title="Promotions", icon="✅", url_path="promotions"),
        st.Page("views/audit.py", title="Audit", icon="📜", url_path="audit"),
        st.Page("views/settings.py", title="Settings", icon="⚙️", url_path="settings"),
    ]
    # Navigation first, hidden until someone logs in: the address's page (a deep link such as
    # /promotions) is kept through the login form and opened once the operator is in.
    logged_in = bool(auth.current_operator()) or bool(st.query_params.get(auth.SESSION_PARAM))
    page = st.navigation(pages, position="sidebar" if logged_in else "hidden")
    operator = auth.require_operator()  # stops the run with the login form until someone logs in
    if not logged_in:  # logged in within this run (gate off, single sign-on): rerun to show the navigation
        st.rerun()
    with st.sidebar:
        st.caption(f"Logged in as **{md(operator)}** · mode **{settings.mode}**")
        if st.session_state.get(auth.SESSION_AUTH_METHOD) != "off" and st.button("Log out"):
            auth.logout()
            st.rerun()
    page.run()


main()
