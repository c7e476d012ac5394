"""Passwords masked out of any text Orbit prints or logs: URLs, their query strings, libpq DSNs.

libpq takes a password in three places, and each is masked wherever it appears in the text:
``postgresql://user:PASSWORD@host/db``, ``postgresql://user@host/db?password=PASSWORD`` (the key
may be percent-encoded, as libpq decodes it) and ``host=db password=PASSWORD`` (quoted or not).
``sslpassword`` (the client key's passphrase) is a secret too. ``PGPASSWORD`` is read by libpq
itself, never by Orbit, and so never printed.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_SECRET_KEYWORDS = frozenset({"password", "sslpassword"})

# Everything between ``user:`` and the authority's last ``@``: a password may hold ``@`` or ``/``
# unencoded, and masking too much is better than too little.
_USERINFO = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/@\s]*:)\S*@")
_QUERY_PARAM = re.compile(r"([?&])([^=&#\s]+)=([^&#\s]*)")
_DSN_PARAM = re.compile(r"(?:^|(?<=\s))((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)")


def mask_url(text: str) -> str:
    """``text`` (a URL, a DSN, or a message holding either) with every password replaced by ``***``."""
    if "://" in text:
        text = _USERINFO.sub(r"\1***@", text)
        text = _QUERY_PARAM.sub(_masked_param, text)
    if "password" in text:
        text = _DSN_PARAM.sub(r"\1***", text)
    return text


def _masked_param(match: re.Match[str]) -> str:
    separator, key, value = match.groups()
    if unquote(key) in _SECRET_KEYWORDS:
        value = "***"
    return f"{separator}{key}={value}"


def one_line(exc: BaseException) -> str:
    """An error as one line, safe to print and log: the first line of the driver's own message
    (SQLAlchemy adds the statement and a link, which say nothing to a user), passwords masked (a
    connection error quotes its URL)."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return mask_url(lines[0]) if lines else type(exc).__name__
