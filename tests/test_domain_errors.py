"""Domain errors raised by services read as problem+json: status from the kind, field messages as `errors`."""

import json

import pytest

from controlplane import errors
from controlplane.api.problems import exception_handler


def _render(exc):
    response = exception_handler(exc, {})
    response.accepted_renderer = None
    return response.status_code, response.data, response


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (errors.NotFound("No such deployment."), 404, "not-found"),
        (errors.Conflict("Deletion protection is on.", code="deletion-protected"), 409, "deletion-protected"),
        (errors.PermissionDenied(), 403, "permission-denied"),
        (errors.RateLimited(retry_after=2.2), 429, "rate-limited"),
        (errors.ValidationFailed({"tier": "Unknown tier."}), 400, "validation-error"),
        (errors.Unprocessable("This quote has expired.", code="quote-expired"), 422, "quote-expired"),
    ],
)
def test_domain_error_maps_to_status_and_code_when_raised_by_a_service(exc, status, code):
    status_code, body, _ = _render(exc)
    assert status_code == status
    assert body["status"] == status
    assert body["type"].endswith("/" + code)
    assert body["detail"]


def test_validation_failed_lists_each_field_message_when_given_a_mapping():
    exc = errors.ValidationFailed({"name": ["Too long.", "Has a newline."], "__all__": "Pick a tier."})
    _, body, _ = _render(exc)
    assert body["errors"] == [
        {"field": "name", "message": "Too long.", "code": "invalid"},
        {"field": "name", "message": "Has a newline.", "code": "invalid"},
        {"field": None, "message": "Pick a tier.", "code": "invalid"},
    ]
    assert exc.message_dict() == {"name": ["Too long.", "Has a newline."], "__all__": ["Pick a tier."]}
    json.dumps(body)  # the body is plain JSON


def test_rate_limited_sets_retry_after_rounded_up_when_fractional():
    _, _, response = _render(errors.RateLimited(retry_after=2.2))
    assert response["Retry-After"] == "3"


def test_conflict_names_its_field_when_it_is_about_one_input():
    _, body, _ = _render(errors.Conflict(fields={"code": "This coupon has been used up."}))
    assert body["detail"] == "This coupon has been used up."
    assert body["errors"] == [{"field": "code", "message": "This coupon has been used up.", "code": "conflict"}]
    _, plain, _ = _render(errors.Conflict("The project still holds deployments."))
    assert plain["errors"] == []


@pytest.mark.django_db
def test_model_clean_answers_like_djangos_own_error_when_a_model_refuses_its_fields():
    from django.core.exceptions import ValidationError

    from projects.models import Project

    project = Project(name="x" * 300, organization_id=1)
    with pytest.raises(ValidationError) as django_error:
        project.full_clean(exclude=["organization"])
    with pytest.raises(errors.ValidationFailed) as domain_error:
        errors.model_clean(project, exclude=["organization"])
    # The same problem+json as the handler gave Django's error when services raised it themselves.
    assert domain_error.value.message_dict() == django_error.value.message_dict
    assert _render(domain_error.value)[1] == _render(django_error.value)[1]
    assert "name" in domain_error.value.message_dict()
