"""Accounts: sign-up (confirmed by email), deactivation, password changes, and ending a user's sessions.

Sign-up never says whether an address has an account: both answers are "check your email", and only the mailbox
learns which. Every change here is audited; nothing here decides what a user may do in an organization.
"""

from __future__ import annotations

import json
import time

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import F
from django.urls import reverse

from accounts.models import User
from controlplane import crypto
from controlplane.errors import Conflict, ValidationFailed

SIGNUP_LINK_TTL_SECONDS = 24 * 60 * 60


def _audit(action: str, *, actor, user: User, summary: dict | None = None) -> None:
    from audit.services import audit_record

    audit_record(actor=actor, organization=None, action=action, target=user, summary=summary or {})


def normalize_email(email: str) -> str:
    return User.objects.normalize_email(str(email or "").strip()).lower()


def _validate_password(password: str, *, email: str, full_name: str) -> None:
    try:
        validate_password(password, user=User(email=email, full_name=full_name))
    except ValidationError as exc:
        raise ValidationFailed({"password": list(exc.messages)}) from None


def user_sessions_end(*, user: User) -> None:
    """End every session of the user at its next request (see User.session_version). A caller that keeps its own
    session calls django.contrib.auth.update_session_auth_hash afterwards."""
    User.objects.filter(pk=user.pk).update(session_version=F("session_version") + 1)
    user.refresh_from_db(fields=["session_version"])


# --- Sign-up ---------------------------------------------------------------------------------------------------


def user_signup_request(*, email: str, password: str, full_name: str = "", organization_name: str = "") -> None:
    """Start a sign-up: email a confirmation link, or, when the address already has an account, an email saying so
    (with a link to reset the password). The caller answers "check your email" either way."""
    email = normalize_email(email)
    _validate_password(password, email=email, full_name=full_name)
    existing = User.objects.filter(email__iexact=email).first()
    if existing is not None:
        reset = f"{settings.PUBLIC_URL}{reverse('console:password-reset')}"
        send_mail(
            subject="Someone tried to sign up with your email address",
            message=(
                f"Someone (perhaps you) tried to create an MQTT Cloud account for {email}, which already has one.\n\n"
                f"If it was you, sign in instead: {settings.PUBLIC_URL}{reverse('console:login')}\n"
                f"Forgot your password? Reset it here: {reset}\n\n"
                "If it was not you, you can ignore this message: nothing was changed.\n"
            ),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=[existing.email],
        )
        return
    # Nothing is stored until the link is followed: the link carries the request, encrypted (the password only
    # as its hash), and expires after a day.
    token = crypto.encrypt_str(
        json.dumps(
            {
                "email": email,
                "full_name": full_name,
                "organization_name": organization_name,
                "password": make_password(password),
                "iat": int(time.time()),
            }
        )
    )
    link = f"{settings.PUBLIC_URL}{reverse('console:signup-confirm')}?token={token}"
    send_mail(
        subject="Confirm your email to create your MQTT Cloud account",
        message=(
            f"Welcome to MQTT Cloud.\n\nConfirm {email} to create your account (the link works for 24 hours):\n"
            f"{link}\n\nIf you did not sign up, ignore this message: no account was created.\n"
        ),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[email],
    )


def signup_token_email(token: str) -> str | None:
    """The address a confirmation link is for, or None if the link is not valid (any more)."""
    data = _signup_token(token)
    return data["email"] if data else None


def _signup_token(token: str) -> dict | None:
    if not isinstance(token, str) or not token or len(token) > 4096:
        return None
    try:
        data = json.loads(crypto.decrypt_str(token))
    except (ValueError, UnicodeError):
        return None
    if not isinstance(data, dict) or time.time() - int(data.get("iat", 0)) > SIGNUP_LINK_TTL_SECONDS:
        return None
    return data


@transaction.atomic
def user_signup_confirm(*, token: str):
    """Create the account a confirmation link asked for: the user, their organization (as Owner) and its Default
    project. Returns (user, organization)."""
    from organizations.services import organization_create

    data = _signup_token(token)
    if data is None:
        raise ValidationFailed({"token": "This link is not valid or has expired: sign up again."})
    email = data["email"]
    if User.objects.filter(email__iexact=email).exists():
        raise Conflict(
            f"An account for {email} already exists: sign in, or reset your password.", code="account-exists"
        )
    user = User(email=email, full_name=data.get("full_name", ""), password=data["password"])
    user.full_clean(exclude=["password"])
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:  # the same link followed twice at once
        raise Conflict(f"An account for {email} already exists: sign in.", code="account-exists") from None
    full_name = data.get("full_name", "")
    organization = organization_create(
        name=data.get("organization_name") or f"{full_name or email.split('@')[0]}'s organization", owner=user
    )
    return user, organization


# --- Account state ---------------------------------------------------------------------------------------------


@transaction.atomic
def user_set_active(*, user: User, actor, active: bool) -> User:
    """Deactivate (or reactivate) an account. Deactivation ends every session of the user at once and for good
    (reactivating does not bring them back); their API keys stop authenticating while the account is inactive."""
    user = User.objects.select_for_update().get(pk=user.pk)
    if user.is_active == active:
        return user
    user.is_active = active
    fields = ["is_active"]
    if not active:
        user.session_version += 1
        fields.append("session_version")
    user.save(update_fields=fields)
    _audit("user.activate" if active else "user.deactivate", actor=actor, user=user, summary={"email": user.email})
    return user


@transaction.atomic
def user_password_changed(*, user: User, actor, how: str) -> None:
    """Record a password change (`how`: change or reset). The new password hash already ended the user's other
    sessions: Django compares each session's hash of it on every request."""
    _audit("user.password_change", actor=actor, user=user, summary={"email": user.email, "how": how})
