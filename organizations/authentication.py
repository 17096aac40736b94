"""`Authorization: Bearer <api key secret>` for the REST API.

Any Authorization header that is present must be a well-formed Bearer API key: anything else (only spaces, another
scheme, a truncated or mangled key) is refused with 401, never ignored in favour of a session and never a 500.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION")
        if header is None:
            return None  # no credential presented: the session (if any) decides
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        parts = header.split()
        if not parts:
            raise exceptions.AuthenticationFailed("The Authorization header is blank: send 'Bearer <api key>'.")
        if parts[0].lower() != self.keyword.lower():
            raise exceptions.AuthenticationFailed(
                "Unsupported authorization scheme: send 'Authorization: Bearer <api key>'."
            )
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Send exactly one API key after 'Bearer'.")
        from organizations.services import api_key_authenticate  # services import models: keep this module light

        # One lookup per request: the idempotency middleware authenticates the request with these same classes
        # before the view does (to know whose Idempotency-Key it is).
        memo = request._request.__dict__.setdefault("_api_key_credentials", {})
        if parts[1] not in memo:
            memo[parts[1]] = api_key_authenticate(parts[1])
        credential = memo[parts[1]]
        if credential is None:
            raise exceptions.AuthenticationFailed("The API key is unknown, revoked or expired.")
        # The key acts for the member who created it; organizations.access caps it at that member's rights.
        return credential.key.created_by, credential

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = ApiKeyAuthentication
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key secret (`cpk_…`), shown once at creation.",
        }
