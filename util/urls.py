"""Secrets in URLs: what a user may put in data.shards or --upload (`http://user:password@host/…`, a signed URL's
`?X-Amz-Signature=…` or `?token=…`) is shown and stored redacted everywhere (logs, error lines, config.yaml, the
checkpoints' saved config); the secret stays in the process that was given it.

    redact("http://me:pw@host/x/?token=abc&n=1")   # 'http://me:***@host/x/?token=***&n=1'
    redact("cannot read http://me:pw@host/x: 403")  # the same inside any text: every URL in it
    redact_logging()                                # each entry script, once it has configured logging
"""
from __future__ import annotations

import logging
import re
import sys
import traceback
import warnings

MASK = "***"
# query parameters that carry a secret: signed URLs (S3's X-Amz-*, GCS's X-Goog-*, Azure's sig), bearer tokens, keys
SECRET_PARAMS = re.compile(r"(?i)^(x-amz-(signature|credential|security-token)|x-goog-(signature|credential)|sig|"
                           r"signature|token|access_token|auth|api_key|apikey|key|password|secret)$")
URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
# the user info runs to the authority's last @ (a password with an unescaped @ in it is still all hidden)
USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)([^/?#]*)@")
PARAM = re.compile(r"([?&;])([^=&;#]+)=([^&;#]*)")


def redact_url(url: str) -> str:
    """`url` with the password of its user info and the values of its secret query parameters replaced by ***."""
    def userinfo(m: re.Match) -> str:
        user, colon, _ = m.group(2).partition(":")
        return f"{m.group(1)}{user}:{MASK}@" if colon else f"{m.group(1)}{MASK}@"

    def param(m: re.Match) -> str:
        return f"{m.group(1)}{m.group(2)}={MASK}" if SECRET_PARAMS.match(m.group(2)) else m.group(0)

    return PARAM.sub(param, USERINFO.sub(userinfo, url, count=1))


def redact(text: str) -> str:
    """`text` with every URL in it redacted (redact_url)."""
    return URL.sub(lambda m: redact_url(m.group(0)), text)


def redact_tree(value):
    """`value` (nested dicts and lists of plain values, as a config dumps) with every string in it redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_tree(v) for v in value)
    return value


class RedactingFormatter(logging.Formatter):
    """A handler's formatter whose every line (message, arguments, traceback) comes out redacted."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def redact_logging() -> None:
    """Every line this process prints through logging, warnings or an uncaught exception's traceback comes out
    redacted. Called by each entry script once it has configured logging: the formatters of the root logger's
    handlers are wrapped, so the records of every module's logger (they propagate to these handlers) are covered, and
    so is the handler tqdm's logging_redirect_tqdm puts in their place (it takes over their formatter)."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter or logging.Formatter()))
    if not getattr(warnings.formatwarning, "redacting", False):
        warnings.formatwarning = _redacting(warnings.formatwarning)
    if not getattr(sys.excepthook, "redacting", False):
        sys.excepthook = _redacted_traceback


def _redacting(formatwarning):
    def formatted(*args, **kwargs) -> str:
        return redact(formatwarning(*args, **kwargs))
    formatted.redacting = True
    return formatted


def _redacted_traceback(kind, value, tb) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))


_redacted_traceback.redacting = True
