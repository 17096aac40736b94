"""`Authorization: Bearer <api key secret>` for the REST API."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if parts[0].lower() != self.keyword.lower():
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Send exactly one API key after 'Bearer'.")
        from organizations.services import api_key_authenticate  # services import DRF: keep this module light

        key = api_key_authenticate(parts[1])
        if key is None:
            raise exceptions.AuthenticationFailed("The API key is unknown, revoked or expired.")
        # The key acts for the member who created it; organizations.access caps it at that member's rights.
        return key.created_by, key

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
