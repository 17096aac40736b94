"""What a page shows once (a new API key's secret, a channel's signing secret, an edge node's password) travels from
the POST that made it to the page that shows it in the session. Sessions are rows in the database until that page is
shown, or until they expire when it never is, and are only signed there: the value is kept encrypted with
FIELD_ENCRYPTION_KEYS, as every other secret at rest."""

from __future__ import annotations

import json
from typing import Any

from controlplane import crypto


def keep(session, key: str, value: dict[str, Any]) -> None:
    session[key] = crypto.encrypt_str(json.dumps(value))


def peek(session, key: str) -> dict[str, Any] | None:
    """The value kept under `key`, still kept; None when there is none or it can no longer be read (the keys that
    sealed it were rotated out: it is not shown, never an error)."""
    sealed = session.get(key)
    if not isinstance(sealed, str):
        return None
    try:
        value = json.loads(crypto.decrypt_str(sealed))
    except ValueError:  # sealed with a key no longer configured, or not JSON
        return None
    return value if isinstance(value, dict) else None


def take(session, key: str) -> dict[str, Any] | None:
    """The value kept under `key`, no longer kept."""
    value = peek(session, key)
    session.pop(key, None)
    return value
