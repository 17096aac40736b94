"""gunicorn's access log without the secret of a password-reset link.

The image's command and the chart's gunicorn.conf.py already leave out the query string and the Referer (invitation
and sign-up links hold their token there). A password-reset link holds its token in the path
(`/console/password-reset/<uidb64>/<token>`, Django's URL): the view trades it for the session at once and redirects
to `…/set-password`, but the first request's line would keep a token that sets the account's password until it is
used or expires. This logger writes that segment as `[token]`, in every atom that can hold the path.
"""

from __future__ import annotations

import re
from typing import Any

from gunicorn.glogging import Logger

# The token segment of the emailed link; `set-password`, where the view redirects, is no secret.
_RESET_TOKEN = re.compile(r"(/password-reset/[^/?#\s]+/)(?!set-password(?:[/?#\s]|$))[^/?#\s]+")
_PATH_ATOMS = ("r", "U", "f")  # the request line, the path, the Referer


def redact(text: str) -> str:
    return _RESET_TOKEN.sub(r"\1[token]", text)


class AccessLogger(Logger):  # type: ignore[misc]  # gunicorn ships no types
    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for name in _PATH_ATOMS:
            if isinstance(atoms.get(name), str):
                atoms[name] = redact(atoms[name])
        return atoms
