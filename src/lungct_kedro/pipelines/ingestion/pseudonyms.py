"""Pseudonymous identifiers derived from original keys with a keyed hash."""

from __future__ import annotations

import hashlib
import hmac


def pseudonym(prefix: str, secret: str, *parts: object) -> str:
    """Return a stable pseudonym such as ``pat-3f9a0c1b2d4e``.

    The same secret and parts always give the same pseudonym, and without the
    secret the original parts cannot be recovered by trying known identifiers.

    Args:
        prefix: Short tag naming what the pseudonym replaces.
        secret: The pseudonym key (``LUNGCT_PSEUDONYM_SECRET``).
        parts: The original keys, for example the source name and the
            patient identifier.
    """
    message = "\x1f".join(str(part) for part in parts).encode("utf-8")
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()
    return f"{prefix}-{digest[:12]}"
