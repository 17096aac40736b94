"""What gunicorn's access log writes for a request whose URL and Referer hold tokens (invitation and sign-up links):
shared by the tests of the two places gunicorn is started, the image's default command and the chart's web pods."""

import datetime
import types

from gunicorn import glogging
from gunicorn.config import Config


def access_log_line(access_log_format: str, logger_class: type = glogging.Logger, path: str = "") -> str:
    """What gunicorn's access log writes, in this format and through `logger_class`, for a signed-out visitor
    following an invitation link and the stylesheet their browser then fetches with that page as its Referer; with
    `path`, for a GET of that path (no query) instead."""
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": "/console/invitations/accept?token=invitation-token-in-the-query",
        "PATH_INFO": "/console/invitations/accept",
        "QUERY_STRING": "token=invitation-token-in-the-query",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "10.1.2.3",
        "HTTP_REFERER": "https://console.example.com/console/signup/confirm?token=signup-token-in-the-referer",
        "HTTP_USER_AGENT": "Mozilla/5.0",
    }
    if path:
        environ.update({"RAW_URI": path, "PATH_INFO": path, "QUERY_STRING": "", "HTTP_REFERER": ""})
    response = types.SimpleNamespace(status="200 OK", sent=512, headers=[])
    atoms = logger_class(Config()).atoms(response, [], environ, datetime.timedelta(milliseconds=12))
    return access_log_format % glogging.SafeAtoms(atoms)
