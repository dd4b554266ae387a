"""Downloads that only a logged-in session can fetch, and only for a short while.

Streamlit serves ``st.download_button`` data from its media file manager at a ``/media/<id>`` URL that
checks no session: bytes handed over with the page stayed fetchable for as long as any session kept
them referenced (17+ minutes were seen, and after logout). So exports here are *deferred*:

  * :func:`deferred` wraps the builder in a callable Streamlit runs only when the operator clicks the
    button (``data=`` a callable, Streamlit ≥ 1.52); the callable refuses to build once its session's
    :class:`Grant` is revoked (logout), so nothing is generated for a session that is gone;
  * the file Streamlit stores for the click is referenced by no session; :func:`purge_downloads`
    removes such files, and runs ``export_ttl_s`` after each generation and at logout — after logout
    the export URL answers 404.

CSV cells are neutralised for spreadsheets (:func:`spreadsheet_safe`, the OWASP CSV-injection rule).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
SESSION_GRANT = "_export_grant"


@dataclass
class Grant:
    """A session's permission to generate exports; revoked at logout (shared with the callables)."""

    active: bool = True


def spreadsheet_safe(cell: object) -> object:
    """A CSV cell a spreadsheet will not run: text starting with = + - @ tab or CR gets a leading '."""
    if isinstance(cell, str) and cell.startswith(FORMULA_PREFIXES):
        return "'" + cell
    return cell


def session_grant() -> Grant:
    """This session's grant, created at login."""
    import streamlit as st

    grant = st.session_state.get(SESSION_GRANT)
    if not isinstance(grant, Grant):
        grant = Grant()
        st.session_state[SESSION_GRANT] = grant
    return grant


def revoke_session_grant() -> None:
    import streamlit as st

    grant = st.session_state.pop(SESSION_GRANT, None)
    if isinstance(grant, Grant):
        grant.active = False
    purge_downloads()


class ExportRefused(PermissionError):
    """The session that offered the download has logged out."""


def deferred(build: Callable[[], bytes | str], ttl_s: float) -> Callable[[], bytes | str]:
    """``build`` as a ``data=`` callable: runs on click, only while the session is logged in."""
    grant = session_grant()

    def produce() -> bytes | str:
        if not grant.active:
            raise ExportRefused("the session that offered this download has logged out")
        data = build()
        timer = threading.Timer(ttl_s, purge_downloads)
        timer.daemon = True  # a pending purge must not keep the server from exiting
        timer.start()
        return data

    return produce


def purge_downloads() -> None:
    """Delete every generated download no session references any more (deferred exports among them).

    Streamlit's own sweep only marks such a file on one script run and deletes it on the next, which
    may be never; two sweeps in a row delete it now.
    """
    from streamlit import runtime

    if not runtime.exists():
        return
    manager = runtime.get_instance().media_file_mgr
    manager.remove_orphaned_files()
    manager.remove_orphaned_files()
