"""Secrets in URLs: what a user may put in data.shards or --upload (`http://user:password@host/…`, a signed URL's
`?X-Amz-Signature=…` or `?token=…`) is shown and stored redacted everywhere (logs, error lines, config.yaml, the
checkpoints' saved config); the secret stays in the process that was given it.

    redact("http://me:pw@host/x/?token=abc&n=1")   # 'http://me:***@host/x/?token=***&n=1'
    redact("cannot read http://me:pw@host/x: 403")  # the same inside any text: every URL in it
"""
from __future__ import annotations

import re

MASK = "***"
# query parameters that carry a secret: signed URLs (S3's X-Amz-*, GCS's X-Goog-*, Azure's sig), bearer tokens, keys
SECRET_PARAMS = re.compile(r"(?i)^(x-amz-(signature|credential|security-token)|x-goog-(signature|credential)|sig|"
                           r"signature|token|access_token|auth|api_key|apikey|key|password|secret)$")
URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)([^/@?#]*)@")
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


def has_secret(url: str) -> bool:
    return redact_url(url) != url
