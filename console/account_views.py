"""The console's account pages: sign-in (password, then a second factor when the user has one), sign-up confirmed by
email (the password is chosen on the link's page), password reset and change, and two-factor authentication (set up,
recovery codes, turn off, and the organization's requirement).

Sign-in is throttled per account and per client address (accounts.signin) and answers 429 with the time to try again;
every page that asks a signed-in user's password again (password change, two-factor on or off, new recovery codes)
counts under the same throttle, since a session alone must never be enough for those.
A user with a second factor is signed in only once it is verified: until then the session holds a pending sign-in,
not a login, so neither the console nor the API treats it as signed in.
"""

from __future__ import annotations

import time
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, update_session_auth_hash
from django.contrib.auth import login as auth_login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render, resolve_url
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods
from django.views.generic import FormView
from django_otp import login as otp_login

from accounts import services as account_services
from accounts import signin, two_factor
from accounts.models import User
from console.account_forms import (
    CodeForm,
    PasswordForm,
    PasswordResetForm,
    SignInForm,
    SignupConfirmForm,
    SignupForm,
)
from controlplane.errors import DomainError, ValidationFailed
from controlplane.ids import holds_nul
from controlplane.middleware import client_ip
from organizations import access
from organizations import services as org_services
from organizations.models import Organization

PENDING_KEY = "_signin_pending"
PENDING_SECONDS = 10 * 60
# The authenticator this session began to set up (after the password): no other session sees its key.
SETUP_KEY = "_two_factor_setup"
SETUP_SECONDS = 15 * 60
_BACKEND = "django.contrib.auth.backends.ModelBackend"


def _add_errors(form, exc: DomainError) -> None:
    """A service's refusal as form errors: on the fields it names, else on the form as a whole."""
    by_field: dict[str, list[str]] = {}
    for error in exc.errors:
        by_field.setdefault(error.field or "__all__", []).append(error.message)
    for field, errors in (by_field or {"__all__": [exc.message]}).items():
        form.add_error(field if field in form.fields else None, errors)


def _next_url(request) -> str:
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return resolve_url(settings.LOGIN_REDIRECT_URL)


def _locked(request, template: str, context: dict, lockout: signin.Lockout):
    response = render(request, template, {**context, "locked": lockout}, status=429)
    response["Retry-After"] = str(lockout.retry_after)
    return response


def _code_refusal(verification) -> str:
    if verification.wait_seconds:
        return f"Too many wrong codes: wait {verification.wait_seconds} s, then try the code your app shows."
    return "That code is not valid."


def _complete_sign_in(request, user: User, device, attempt: signin.Attempt | None) -> None:
    request.session.pop(PENDING_KEY, None)
    auth_login(request, user, backend=_BACKEND)
    if device is not None:
        otp_login(request, device)
    signin.signin_succeeded(attempt, user=user, two_factor=device is not None)


# --- Sign-in ---------------------------------------------------------------------------------------------------


@sensitive_post_parameters("password")
@never_cache
@require_http_methods(["GET", "POST"])
def login(request):
    next_url = _next_url(request)
    form = SignInForm(request.POST or None)
    context = {"form": form, "next": next_url}
    if request.method == "POST" and form.is_valid():
        email, password = form.cleaned_data["username"], form.cleaned_data["password"]
        # Counted before the password is checked: guesses sent at once are held to the limit too.
        attempt = signin.signin_begin(email=email, ip=client_ip(request))
        if attempt.refused:
            return _locked(request, "console/account/login.html", context, attempt.lockout)
        user = authenticate(request, username=email, password=password)
        if user is None:  # wrong password, no such account, or a deactivated one: one answer for all
            lockout = signin.signin_failed(attempt, reason="password")
            if lockout is not None:
                return _locked(request, "console/account/login.html", context, lockout)
            form.add_error(None, "The email or password is not correct.")
        elif two_factor.two_factor_enabled(user):
            signin.signin_passed(attempt)  # the password was right; the code is an attempt of its own
            request.session.cycle_key()
            request.session[PENDING_KEY] = {
                "user": user.pk,
                "hash": user.get_session_auth_hash(),
                "at": time.time(),
                "next": next_url,
            }
            return redirect("console:login-verify")
        else:
            _complete_sign_in(request, user, None, attempt)
            return redirect(next_url)
    return render(request, "console/account/login.html", context)


def _pending_user(request) -> tuple[User, str] | None:
    """The user whose password was accepted in this session and who still owes a second factor, if still valid."""
    pending = request.session.get(PENDING_KEY)
    if not isinstance(pending, dict) or time.time() - float(pending.get("at", 0)) > PENDING_SECONDS:
        return None
    user = User.objects.filter(pk=pending.get("user"), is_active=True).first()
    if user is None or pending.get("hash") != user.get_session_auth_hash():
        return None  # deactivated, or the password changed meanwhile
    return user, pending.get("next") or resolve_url(settings.LOGIN_REDIRECT_URL)


@sensitive_post_parameters("code")
@never_cache
@require_http_methods(["GET", "POST"])
def login_verify(request):
    pending = _pending_user(request)
    if pending is None:
        request.session.pop(PENDING_KEY, None)
        messages.error(request, "Sign in again: the sign-in expired.")
        return redirect("console:login")
    user, next_url = pending
    form = CodeForm(request.POST or None)
    context = {"form": form, "email": user.email}
    if request.method == "POST" and form.is_valid():
        attempt = signin.signin_begin(email=None, user=user, ip=client_ip(request))
        if attempt.refused:
            return _locked(request, "console/account/login_verify.html", context, attempt.lockout)
        verification = two_factor.two_factor_verify(user=user, token=form.cleaned_data["code"])
        if verification.device is None:
            lockout = signin.signin_failed(attempt, reason="two_factor")
            if lockout is not None:
                return _locked(request, "console/account/login_verify.html", context, lockout)
            form.add_error("code", _code_refusal(verification))
        else:
            _complete_sign_in(request, user, verification.device, attempt)
            return redirect(next_url)
    return render(request, "console/account/login_verify.html", context)


# --- Sign-up ---------------------------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def signup(request):
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            account_services.user_signup_request(**form.cleaned_data)
        except ValidationFailed as exc:
            _add_errors(form, exc)
        else:
            # The same answer whether or not the address has an account: only the mailbox learns which.
            return redirect("console:signup-sent")
    return render(request, "console/account/signup.html", {"form": form})


def signup_sent(request):
    return render(
        request,
        "console/account/message.html",
        {
            "title": "Check your email",
            "message": "We sent a message to the address you gave. Follow its link to finish creating your account.",
        },
    )


@sensitive_post_parameters("password")
@require_http_methods(["GET", "POST"])
def signup_confirm(request):
    """GET shows the password to choose and a button; POST creates the account (mail scanners follow links with GET
    and must create nothing). The password is chosen here, by whoever holds the link, never at sign-up."""
    token = request.POST.get("token") or request.GET.get("token") or ""
    email = account_services.signup_token_email(token)
    form = SignupConfirmForm(request.POST or None)
    error = None
    if request.method == "POST" and email is not None and form.is_valid():
        try:
            user, organization = account_services.user_signup_confirm(
                token=token, password=form.cleaned_data["password"]
            )
        except DomainError as exc:
            if any(e.field == "password" for e in exc.errors):
                _add_errors(form, exc)  # too weak, too common, too like the address: choose again
            else:
                error = exc.message
        else:
            _complete_sign_in(request, user, None, None)
            return redirect("console:organization", org_id=organization.public_id)
    return render(
        request,
        "console/account/signup_confirm.html",
        {"token": token, "email": email, "error": error, "form": form},
    )


# --- Password reset and change ----------------------------------------------------------------------------------


class PasswordResetView(FormView):
    """The address goes to a task that looks it up and sends the email (accounts.services.password_reset_request):
    the answer takes as long for an account as for an unknown address."""

    form_class = PasswordResetForm
    template_name = "console/account/password_reset.html"
    success_url = reverse_lazy("console:password-reset-done")

    def form_valid(self, form):
        account_services.password_reset_request(email=form.cleaned_data["email"])
        return HttpResponseRedirect(self.get_success_url())


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "console/account/password_reset_confirm.html"
    success_url = reverse_lazy("console:password-reset-complete")

    def get_user(self, uidb64):
        # Django's view finds the account whatever its state, and its token does not hash `is_active`: a link mailed
        # before an administrator deactivated the account still set a password. An inactive account's link is invalid.
        user = super().get_user(uidb64)
        return user if user is not None and user.is_active else None

    def form_valid(self, form):
        # Django's form_valid saves the password itself, outside the transaction the audit needs: the service does
        # both. The new password hash ends every session of the user (Django compares it on each request).
        account_services.user_password_change(
            user=form.user,
            actor=access.Principal(user=form.user),
            password=form.cleaned_data["new_password1"],
            how="reset",
        )
        del self.request.session[auth_views.INTERNAL_RESET_SESSION_TOKEN]
        return HttpResponseRedirect(self.get_success_url())


def password_reset_done(request):
    return render(
        request,
        "console/account/message.html",
        {
            "title": "Check your email",
            "message": "If an account exists for that address, we sent it a link to choose a new password.",
        },
    )


def password_reset_complete(request):
    return render(
        request,
        "console/account/message.html",
        {"title": "Password changed", "message": "Your password was changed. You can sign in."},
    )


@sensitive_post_parameters("old_password", "new_password1", "new_password2")
@login_required
@require_http_methods(["GET", "POST"])
def password_change(request):
    form = PasswordChangeForm(request.user, request.POST or None)
    if request.method == "POST":
        # The old password is a password oracle for whoever holds the session: one more sign-in attempt, counted
        # before the form checks it.
        attempt = signin.signin_begin(email=None, user=request.user, ip=client_ip(request))
        if attempt.refused:
            return _locked(request, "console/account/password_change.html", {"form": form}, attempt.lockout)
        if not form.is_valid() and form.has_error("old_password", "password_incorrect"):
            lockout = signin.signin_failed(attempt, reason="reauthentication")
            if lockout is not None:
                return _locked(request, "console/account/password_change.html", {"form": form}, lockout)
        else:
            signin.signin_passed(attempt)
    if request.method == "POST" and form.is_valid():
        user = account_services.user_password_change(
            user=request.user, actor=_principal(request), password=form.cleaned_data["new_password1"], how="change"
        )
        update_session_auth_hash(request, user)  # this session stays; every other one ends at its next request
        messages.success(request, "Your password was changed. Your other sessions were signed out.")
        return redirect("console:password-change")
    return render(request, "console/account/password_change.html", {"form": form})


# --- Two-factor authentication ------------------------------------------------------------------------------------


def _principal(request):
    return access.Principal.from_request(request)


def _owned_organizations(request):
    """Organizations where the user may set the two-factor requirement (Owners: the org:security scope)."""
    principal = _principal(request)
    return [
        organization
        for organization in Organization.objects.filter(memberships__user=request.user).order_by("name")
        if access.has_scope(principal, "org:security", organization=organization)
    ]


@never_cache
@sensitive_post_parameters("password")
@login_required
@require_http_methods(["GET", "POST"])
def two_factor_overview(request):
    user = request.user
    if request.method == "POST" and request.POST.get("action") == "start":
        # The password first: a stolen session must not enrol its own authenticator (which would end the owner's
        # other sessions and take the account), nor give a staff account its second factor for the admin.
        try:
            _reauthenticate(request, PasswordForm(request.POST))
            device = two_factor.two_factor_begin(user=user)
        except DomainError as exc:
            return _reauthentication_refused(request, exc)
        # Only this session is shown the new key and may confirm it.
        request.session[SETUP_KEY] = {"device": device.pk, "at": time.time()}
        return redirect(_with_next(reverse("console:two-factor-setup"), request))
    return _two_factor_page(request)


def _setup_device(request):
    """The authenticator this session began setting up, while it is pending and for SETUP_SECONDS at most."""
    setup = request.session.get(SETUP_KEY)
    if not isinstance(setup, dict) or time.time() - float(setup.get("at", 0)) > SETUP_SECONDS:
        return None
    return two_factor.pending_device(request.user, device_id=setup.get("device"))


def _two_factor_page(request, *, locked: signin.Lockout | None = None):
    user = request.user
    required_by = request.GET.get("required_by")
    enabled = two_factor.two_factor_enabled(user)
    response = render(
        request,
        "console/account/two_factor.html",
        {
            "enabled": enabled,
            "codes_left": two_factor.recovery_codes_left(user),
            "owned": _owned_organizations(request),
            # The organization that sent a member without a device here to set one up. A member with one is sent to
            # enter its code instead: its session, perhaps holding only the password, is not told the name of an
            # organization whose data waits for that code. No organization's id holds a NUL, and PostgreSQL refuses
            # one in a query (a 500): none is named.
            "required_by": Organization.objects.filter(public_id=required_by, memberships__user=user).first()
            if isinstance(required_by, str) and not holds_nul(required_by) and not enabled
            else None,
            "next": _next_url(request) if request.GET.get("next") else "",
            "locked": locked,
        },
        status=429 if locked else 200,
    )
    if locked:
        response["Retry-After"] = str(locked.retry_after)
    return response


def _with_next(url: str, request) -> str:
    """`url`, carrying the page the user was on its way to (an organization that requires two-factor)."""
    if not (request.POST.get("next") or request.GET.get("next")):
        return url
    return f"{url}?{urlencode({'next': _next_url(request)})}"


@never_cache
@sensitive_post_parameters("code")
@login_required
@require_http_methods(["GET", "POST"])
def two_factor_setup(request):
    user = request.user
    device = _setup_device(request)
    if device is None:
        return redirect("console:two-factor")
    form = CodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            device, codes = two_factor.two_factor_confirm(
                user=user, token=form.cleaned_data["code"], device_id=device.pk
            )
        except DomainError as exc:
            _add_errors(form, exc)
        else:
            request.session.pop(SETUP_KEY, None)
            update_session_auth_hash(request, user)  # other sessions end; this one goes on, verified
            otp_login(request, device)
            return render(
                request,
                "console/account/recovery_codes.html",
                {"codes": codes, "next": _next_url(request) if request.POST.get("next") else ""},
            )
    return render(
        request,
        "console/account/two_factor_setup.html",
        {"form": form, "secret": two_factor.secret_base32(device), "next": request.GET.get("next", "")},
    )


@never_cache
@login_required
def two_factor_qr(request):
    """The QR code of the authenticator being set up, as an SVG image from our own origin (the CSP allows no
    inline script, and the secret never leaves for a third-party QR service)."""
    device = _setup_device(request)
    if device is None:
        raise Http404("No authenticator is being set up.")
    response = HttpResponse(two_factor.qr_svg(device), content_type="image/svg+xml")
    response["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response


def _reauthenticate(request, form: PasswordForm) -> None:
    """The signed-in user's password, asked again under the sign-in throttle (accounts.signin.reauthenticate)."""
    if not form.is_valid():
        raise ValidationFailed({"password": "Enter your password."})
    signin.reauthenticate(user=request.user, password=form.cleaned_data["password"], ip=client_ip(request))


def _reauthentication_refused(request, exc: DomainError):
    """The page says why; when the sign-in throttle is locked, it answers 429."""
    if isinstance(exc, signin.SignInLocked):
        return _two_factor_page(request, locked=exc.lockout)
    messages.error(request, exc.message)
    return redirect(_with_next(reverse("console:two-factor"), request))


@never_cache
@sensitive_post_parameters("password")
@login_required
@require_http_methods(["POST"])
def two_factor_disable(request):
    try:
        _reauthenticate(request, PasswordForm(request.POST))
        two_factor.two_factor_disable(user=request.user)
    except DomainError as exc:
        return _reauthentication_refused(request, exc)
    update_session_auth_hash(request, request.user)
    messages.success(request, "Two-factor authentication is off. Your other sessions were signed out.")
    return redirect("console:two-factor")


@never_cache
@sensitive_post_parameters("password")
@login_required
@require_http_methods(["POST"])
def recovery_codes_regenerate(request):
    verified_by_old_code = two_factor.verified_by_recovery_code(request.user)
    try:
        _reauthenticate(request, PasswordForm(request.POST))
        device, codes = two_factor.recovery_codes_regenerate(user=request.user)
    except DomainError as exc:
        return _reauthentication_refused(request, exc)
    if verified_by_old_code:  # this session goes on verified; others an old code verified must verify again
        otp_login(request, device)
    return render(request, "console/account/recovery_codes.html", {"codes": codes, "next": ""})


@never_cache
@sensitive_post_parameters("code")
@login_required
@require_http_methods(["GET", "POST"])
def two_factor_verify(request):
    """A signed-in session that was not verified by the user's second factor (an organization requires it)."""
    user = request.user
    next_url = _next_url(request)
    if user.is_verified():
        return redirect(next_url)
    form = CodeForm(request.POST or None)
    context = {"form": form, "email": user.email, "next": next_url}
    if request.method == "POST" and form.is_valid():
        attempt = signin.signin_begin(email=None, user=user, ip=client_ip(request))
        if attempt.refused:
            return _locked(request, "console/account/two_factor_verify.html", context, attempt.lockout)
        verification = two_factor.two_factor_verify(user=user, token=form.cleaned_data["code"])
        if verification.device is None:
            lockout = signin.signin_failed(attempt, reason="two_factor")
            if lockout is not None:
                return _locked(request, "console/account/two_factor_verify.html", context, lockout)
            form.add_error("code", _code_refusal(verification))
        else:
            otp_login(request, verification.device)
            signin.signin_succeeded(attempt, user=user, two_factor=True)
            return redirect(next_url)
    return render(request, "console/account/two_factor_verify.html", context)


@login_required
@require_http_methods(["POST"])
def organization_two_factor(request, org_id):
    """An Owner requires (or stops requiring) two-factor authentication of the organization's members."""
    # No organization's id holds a NUL (PostgreSQL would refuse the lookup): such an address names none.
    organization = (
        None
        if holds_nul(org_id)
        else Organization.objects.filter(public_id=org_id, memberships__user=request.user).first()
    )
    if organization is None:
        raise Http404("No such organization")
    required = request.POST.get("require_two_factor") == "on"
    try:
        org_services.organization_require_two_factor(
            organization=organization, actor=_principal(request), required=required
        )
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        state = "now requires" if required else "no longer requires"
        messages.success(request, f"{organization.name} {state} two-factor authentication of its members.")
    return redirect("console:two-factor")
