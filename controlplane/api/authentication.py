"""Console sessions for the API: DRF's session authentication (CSRF enforced), answering 401 rather than 403."""

from drf_spectacular.authentication import SessionScheme
from rest_framework import authentication
from rest_framework.request import Request


class SessionAuthentication(authentication.SessionAuthentication):
    def authenticate_header(self, request: Request) -> str:
        # Without a WWW-Authenticate header DRF would turn "not signed in" into 403; the key scheme is the hint.
        return 'Bearer realm="api"'


class SessionAuthenticationScheme(SessionScheme):
    target_class = "controlplane.api.authentication.SessionAuthentication"
