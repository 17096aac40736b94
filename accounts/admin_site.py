"""The admin backoffice's site: staff sign in with their password and a code from their authenticator (django-otp),
under the same sign-in throttle as the console. A session without a verified second factor never reaches it."""

from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError
from django.shortcuts import redirect
from django_otp import user_has_device
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite

from accounts import signin
from accounts.views import SignOutView
from controlplane.middleware import client_ip

# Refusals that are failed attempts; django-otp's "verification disabled after failures" carries no code. The rest
# ("enter your code", "pick a device") are steps of a sign-in going well.
_PASSWORD_FAILURES = {"invalid_login", "inactive"}
_CODE_FAILURES = {"invalid_token", None}


class ThrottledOTPAdminAuthenticationForm(OTPAdminAuthenticationForm):
    lockout: signin.Lockout | None = None

    def clean(self):
        email = self.cleaned_data.get("username") or ""
        # Counted before the password and the code are checked, as in the console (accounts.signin.signin_begin).
        attempt = signin.signin_begin(email=email, ip=client_ip(self.request))
        if attempt.refused:
            self.lockout = attempt.lockout
            raise ValidationError(self.lockout.message, code="locked")
        try:
            AdminAuthenticationForm.clean(self)  # the password (and is_staff)
            user = self.get_user()
            if user is not None and not user_has_device(user):
                raise ValidationError(
                    "Staff sign in with two-factor authentication: set it up in the console first "
                    "(/console/account/two-factor).",
                    code="no_device",
                )
            self.clean_otp(user)
        except ValidationError as exc:
            codes = {error.code for error in exc.error_list}
            if codes & (_PASSWORD_FAILURES | _CODE_FAILURES):
                reason = "password" if codes & _PASSWORD_FAILURES else "two_factor"
                self.lockout = signin.signin_failed(attempt, reason=reason)
                if self.lockout is not None:
                    raise ValidationError(self.lockout.message, code="locked") from None
            else:
                signin.signin_passed(attempt)  # a step of a sign-in going well (enter your code), or nothing checked
            raise
        if self.get_user() is not None and not self.errors:  # a form missing its fields signs in nobody
            signin.signin_succeeded(attempt, user=self.get_user(), two_factor=True)
        else:
            signin.signin_passed(attempt)
        return self.cleaned_data


class OTPRequiredAdminSite(OTPAdminSite):
    """The default admin site (see accounts.apps.AdminConfig)."""

    login_form = ThrottledOTPAdminAuthenticationForm

    def __init__(self, name="admin"):
        super().__init__(name)

    def password_change(self, request, extra_context=None):
        """Staff change their password on the console's page, never here: Django's admin page checks the old
        password outside the sign-in throttle (a stolen session could guess it without limit) and records no
        user.password_change."""
        return redirect("console:password-change")

    def logout(self, request, extra_context=None):
        """Django's admin sign-out, through the audited view the console uses too (accounts.views.SignOutView):
        Django's own builds a plain LogoutView, which would end a staff session with no `logout` event."""
        request.current_app = self.name
        context = {**self.each_context(request), "has_permission": False, **(extra_context or {})}
        template = {"template_name": self.logout_template} if self.logout_template is not None else {}
        return SignOutView.as_view(extra_context=context, **template)(request)

    def login(self, request, extra_context=None):
        response = super().login(request, extra_context)
        form = (getattr(response, "context_data", None) or {}).get("form")
        lockout = getattr(form, "lockout", None)
        if lockout is not None:
            response.status_code = 429
            response["Retry-After"] = str(lockout.retry_after)
        return response
