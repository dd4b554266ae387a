"""How the dashboard shows text it did not write itself: as text, never as markup, never with a secret.

Image paths and names, metadata values quoted in errors, log lines, alert messages, audit payloads,
promotion reasons, model answers: anyone who can write a file, a sidecar or a log line controls them.
Streamlit renders the body of ``st.write``/``st.caption``/``st.error``/``st.metric``/labels … as
GitHub-flavoured Markdown, where ``![d](http://host/x.png)`` makes the operator's browser fetch a URL,
``[click](http://evil)`` or a bare ``http://evil`` is a link, and ``:red[..]``/``$..$`` are directives.

So every such string goes through one of:
  * :func:`md` — for a Markdown context: secrets redacted, control characters made spaces, and every
    ASCII punctuation character backslash-escaped (CommonMark lets any of them be escaped; an escaped
    ``[``, ``!``, ``<``, ``:``, ``@``, ``.`` or ``$`` starts no image, link, autolink, HTML, emoji,
    directive or formula), so the reader sees exactly the original characters;
  * :func:`text` / :func:`value` / :func:`rows` — for plain-text elements (``st.text``, ``st.code``,
    ``st.json``, ``st.dataframe`` cells, option labels): secrets redacted only;
and all of them mask every URL in the text (userinfo password, query values: healing.config.mask_url).
  * :func:`plot_text` — for Plotly titles and labels, which accept a few HTML tags (``<a href>`` among
    them): secrets redacted and ``& < >`` entity-escaped.
No page passes user data to ``unsafe_allow_html``.
"""

from __future__ import annotations

import html
import re
import string
from collections.abc import Iterable, Mapping
from typing import Any

from healing.config import mask_url
from healing.redaction import Redactor, default_redactor

_MD_ESCAPES = {ord(ch): "\\" + ch for ch in string.punctuation}
_AUTOLINK_POINTS = re.compile(r"(?<=:)(?=//)|(?<=www)(?=\.)|(?<=@)", re.IGNORECASE)
WORD_JOINER = "\u2060"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>()\[\]]+")


def redactor() -> Redactor:
    """The process's redactor plus the dashboard's own secrets (OIDC client and cookie secrets)."""
    from dashboard.auth import streamlit_secrets

    return default_redactor().with_secrets(streamlit_secrets())


def text(value: Any, clean: Redactor | None = None) -> str:
    """``value`` as a plain string without any configured secret, every URL in it masked (mask_url)."""
    plain = (clean or redactor())("" if value is None else str(value))
    return _URL.sub(lambda m: mask_url(m.group()), plain)


def md(value: Any) -> str:
    """``value`` for a Markdown context: shown literally, one line, without secrets."""
    clean = "".join(ch if ch.isprintable() else " " for ch in text(value))
    return _AUTOLINK_POINTS.sub(WORD_JOINER, clean).translate(_MD_ESCAPES)


def value(data: Any) -> Any:
    """A JSON-like value (for ``st.json``) with every string redacted and its URLs masked."""
    return _value(data, redactor())


def _value(data: Any, clean: Redactor) -> Any:
    if isinstance(data, str):
        return text(data, clean)
    if isinstance(data, Mapping):
        return {_value(k, clean): _value(v, clean) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_value(v, clean) for v in data]
    return data


def rows(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Table rows (for ``st.dataframe``) with every string cell redacted."""
    clean = redactor()
    return [{key: text(cell, clean) if isinstance(cell, str) else cell for key, cell in item.items()} for item in items]


def plot_text(value: Any) -> str:
    """A string for a Plotly title, label or hover text: secrets redacted, HTML-like tags inert."""
    return html.escape(text(value), quote=False)
