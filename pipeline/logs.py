"""Logging for every process: one format, one level setting, secrets redacted.

A URL in a log line loses its user info and its query values
(``ws://trader:PASSWORD@host/x?token=abc`` -> ``ws://***@host/x?token=***``),
whoever wrote the line (our code, ccxt's error messages, websocket-client), so
credentials put in a ``ws_url`` or ``rest_url`` never reach a terminal or a log
file; and a value written after a key that names a credential (``'X-MBX-APIKEY':
'...'``, ``api_secret=...``, ``Authorization: Bearer ...``) is hidden the same way.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\]{},]+")
HIDDEN = "***"


def redact_url(url: str) -> str:
    """The URL without user info and with every query value hidden."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return HIDDEN
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{HIDDEN}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        query = urlencode([(k, HIDDEN) for k, _ in parse_qsl(query, keep_blank_values=True)],
                          safe="*") or HIDDEN
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


# a credential written as a key and its value ('X-MBX-APIKEY': 'k', api_secret=s, "token": "t",
# Authorization: Bearer t): the value is hidden, the key kept (what was there, not what it was)
_KEYED_SECRET = re.compile(
    r"""(?ix)
    ( ["']? [\w-]* (?:api[-_]?key|secret|signature|token|passw(?:or)?d|passphrase|private[-_]?key
                       |credential|authorization|listen[-_]?key) [\w-]* ["']? \s* [:=] \s* )
    ( ["']? )
    ( (?:bearer\s+|basic\s+)? [^\s'",}&]+ )""")


def redact(text: str) -> str:
    """``text`` with every URL in it redacted, and every value written after a key that
    names a credential."""
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    return _KEYED_SECRET.sub(lambda m: m.group(1) + m.group(2) + HIDDEN, text)


class RedactingFilter(logging.Filter):
    """Formats the record's message once, redacted (a handler filter, so it covers the
    records of every logger, libraries' included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def configure(name: str = "%(name)s") -> None:
    """stderr at $TICKPIPE_LOG_LEVEL (INFO), lines tagged with ``name`` and the pid."""
    logging.basicConfig(level=os.environ.get("TICKPIPE_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
