"""Sends a console user to two-factor authentication before any page of an organization that requires it.

A member without a device goes to set one up; one with a device whose session was not verified by it goes to enter
a code. Nothing is remembered between requests: the organization's setting and the membership are read each time.
The REST API answers such sessions 403 itself (organizations.access.member_organization); API keys are not affected.
"""

from urllib.parse import urlencode

from django.shortcuts import redirect
from django_otp import user_has_device

from controlplane.ids import holds_nul
from organizations.models import Organization

# The URL keyword that names the organization on console pages.
_ORG_KWARGS = ("org_id", "org")


class TwoFactorRequirementMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        match = getattr(request, "resolver_match", None)
        if match is None or "console" not in match.namespaces:
            return None
        org_id = next((view_kwargs[k] for k in _ORG_KWARGS if isinstance(view_kwargs.get(k), str)), None)
        if org_id is None or holds_nul(org_id):
            return None  # no organization's id holds a NUL: the page answers 404
        user = request.user
        if not user.is_authenticated or user.is_verified():
            return None
        requires = Organization.objects.filter(
            public_id=org_id, memberships__user=user, require_two_factor=True
        ).exists()
        if not requires:
            return None  # not required, or not a member: the page itself answers (404 for strangers)
        target = "console:two-factor-verify" if user_has_device(user) else "console:two-factor"
        response = redirect(target)
        response["Location"] += "?" + urlencode({"next": request.get_full_path(), "required_by": org_id})
        return response
