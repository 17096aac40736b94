"""OpenAPI generation: typed path parameters, the problem+json error responses, Idempotency-Key and rate-limit headers.

Applied to every operation so that no view has to remember them.
"""

from typing import Any

from drf_spectacular import openapi
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import Direction, OpenApiParameter
from rest_framework import serializers

PATH_PARAMETERS = {
    "org": ("Organization id", "org_"),
    "project": ("Project id", "prj_"),
    "member": ("Membership id", "mem_"),
    "invitation": ("Invitation id", "ivt_"),
    "key": ("API key id", "key_"),
    "event": ("Audit event id", "evt_"),
    "dep": ("Deployment id", "dep_"),
    "op": ("Operation id", "op_"),
    "cert": ("TLS certificate id", "crt_"),
    "peering": ("VPC peering id", "pcx_"),
}


class ProblemFieldError(serializers.Serializer[Any]):
    field = serializers.CharField(allow_null=True, help_text="Dotted path into the request body, or null.")
    message = serializers.CharField()
    code = serializers.CharField()


class Problem(serializers.Serializer[Any]):
    """RFC 9457 problem details."""

    type = serializers.URLField()
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField()
    request_id = serializers.CharField(required=False)
    # A declared field: DRF's metaclass takes it off the class, so Serializer.errors is not shadowed at run time.
    errors = ProblemFieldError(many=True)  # type: ignore[assignment]


ERROR_DESCRIPTIONS = {
    "400": "The request is malformed or a field is invalid; `errors` names each field.",
    "401": "No valid credentials: send `Authorization: Bearer <api key>` or sign in.",
    "403": "Your role does not grant the scope this operation needs.",
    "404": "No such resource, or it belongs to an organization you are not in.",
    "409": "The resource's current state does not allow this (in progress, protected, duplicate name…).",
    "413": "The request body is over 1 MiB.",
    "422": "The Idempotency-Key was already used for a different request.",
    "429": "Rate limit exceeded; see `Retry-After` and `GET /api/v1/rate-limits`.",
    "503": "A service this operation needs (the payment provider, DNS for a webhook's host) did not answer; nothing "
    "was changed. See `Retry-After`.",
}

RETRY_AFTER = {"schema": {"type": "integer"}, "description": "Seconds to wait before trying again."}

PROBLEM_EXAMPLE = {
    "type": "https://docs.mqtt-cloud.example/problems/validation-error",
    "title": "Invalid request",
    "status": 400,
    "detail": "name: This field is required.",
    "request_id": "5f0c8a2e9b6d4c1f8e7a6b5c4d3e2f10",
    "errors": [{"field": "name", "message": "This field is required.", "code": "required"}],
}

RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": "Capacity of the tightest bucket that applies to this request.",
    "RateLimit-Remaining": "Requests left in that bucket.",
    "RateLimit-Reset": "Seconds until that bucket is full again.",
}


class AutoSchema(openapi.AutoSchema):
    def _resolve_path_parameters(self, variables: list[str]) -> list[dict[str, Any]]:
        known = [v for v in variables if v in PATH_PARAMETERS]
        others = [v for v in variables if v not in PATH_PARAMETERS]
        params: list[dict[str, Any]] = super()._resolve_path_parameters(others)  # type: ignore[no-untyped-call]
        for name in known:
            description, prefix = PATH_PARAMETERS[name]
            params.append(
                {
                    "in": "path",
                    "name": name,
                    "required": True,
                    "description": f"{description} (`{prefix}…`).",
                    "schema": {
                        "type": "string",
                        "pattern": f"^{prefix}[a-z0-9]+$",
                        "example": f"{prefix}7f3k2m9q4x8c1v5b6n0z",
                    },
                }
            )
        return params

    def get_override_parameters(self) -> list[Any]:
        params = list(super().get_override_parameters())
        if self.method in ("POST", "PUT", "PATCH", "DELETE"):
            params.append(
                OpenApiParameter(
                    "Idempotency-Key",
                    OpenApiTypes.STR,
                    OpenApiParameter.HEADER,
                    required=False,
                    description="Any unique string (a UUID). A retry with the same key and body within 24 h returns the "
                    "first response with `Idempotent-Replayed: true`; with another body it answers 422.",
                )
            )
        return params

    def _error_codes(self) -> list[str]:
        # 400 everywhere: a body, a filter, a cursor or a page size can each be malformed.
        codes = ["400", "401", "403", "429"] if self.get_auth() else ["400", "429"]
        if self.method in ("POST", "PUT", "PATCH"):
            codes += ["413"]
        if self.method in ("POST", "PUT", "PATCH", "DELETE"):
            codes += ["409", "422"]
        elif getattr(self.view, "read_conflicts", False):
            codes.append("409")  # a read refused by the resource's state (a Premium deployment being deleted)
        if "{" in self.path:
            codes.append("404")
        if getattr(self.view, "action", None) in getattr(self.view, "outside_service_actions", ()):
            codes.append("503")  # the operation waits on an outside service (Stripe, DNS) that may be down
        return sorted(set(codes))

    def _get_request_body(self, direction: Direction = "request") -> dict[str, Any] | None:
        # drf-spectacular documents a body for POST, PUT and PATCH only. An action a view names in
        # `body_on_delete_actions` takes one with DELETE (deleting an organization takes its name, typed to confirm):
        # it is documented as for a POST.
        if self.method == "DELETE" and getattr(self.view, "action", None) in getattr(
            self.view, "body_on_delete_actions", ()
        ):
            self.method = "POST"
            try:
                body: dict[str, Any] | None = super()._get_request_body(direction)  # type: ignore[no-untyped-call]
            finally:
                self.method = "DELETE"
            return body
        default: dict[str, Any] | None = super()._get_request_body(direction)  # type: ignore[no-untyped-call]
        return default

    def _get_response_bodies(self, direction: Direction = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        component = self.resolve_serializer(Problem, "response")
        # A view may show what one of its actions' refusals looks like (action -> status -> problem body).
        own_examples = getattr(self.view, "problem_examples", {}).get(getattr(self.view, "action", None), {})
        for code in self._error_codes():
            response = {
                "description": ERROR_DESCRIPTIONS[code],
                "content": {
                    "application/problem+json": {
                        "schema": component.ref,
                        "example": own_examples.get(code) or {**PROBLEM_EXAMPLE, "status": int(code)},
                    }
                },
            }
            if code in ("429", "503"):
                response["headers"] = {"Retry-After": RETRY_AFTER}
            responses.setdefault(code, response)
        return responses

    def _get_examples(
        self,
        serializer: Any,
        direction: Direction,
        media_type: str,
        status_code: str | None = None,
        extras: Any = None,
    ) -> dict[str, Any] | None:
        # A serializer's examples default to 200/201; an accepted (202) answer shows the same resource.
        examples: dict[str, Any] | None = super()._get_examples(  # type: ignore[no-untyped-call]
            serializer, direction, media_type, status_code, extras
        )
        if not examples and status_code and status_code.startswith("2") and status_code not in ("200", "201"):
            examples = super()._get_examples(  # type: ignore[no-untyped-call]
                serializer, direction, media_type, "200", extras
            )
        return examples

    def _get_response_headers_for_code(
        self, status_code: str | int, direction: Direction = "response"
    ) -> dict[str, Any]:
        headers: dict[str, Any] = super()._get_response_headers_for_code(status_code, direction)
        for name, description in RATE_LIMIT_HEADERS.items():
            headers.setdefault(name, {"schema": {"type": "integer"}, "description": description})
        if str(status_code) in ("429", "503"):
            headers["Retry-After"] = RETRY_AFTER
        return headers
