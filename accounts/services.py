"""Accounts: sign-up (confirmed by email), password reset emails, deactivation, password changes, and ending a user's
sessions.

Sign-up and password reset never say whether an address has an account: the request does the same work either way
(it only enqueues a task, which looks the address up and sends the email), and only the mailbox learns which. Every
change here is audited; nothing here decides what a user may do in an organization.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any, Required, TypedDict

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import F
from django.template import loader
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounts.models import User
from controlplane import crypto
from controlplane.errors import Conflict, ValidationFailed, model_clean
from controlplane.tasks import enqueue_on_commit
from controlplane.validators import CONTROL_CHARACTERS, control_character_message, find_control_character

if TYPE_CHECKING:
    from organizations.access import Principal
    from organizations.models import Organization

SIGNUP_LINK_TTL_SECONDS = 24 * 60 * 60
# Emails the public sign-up and password-reset forms send to one address: a bucket of 5 per form, one more each hour.
# Past it the request answers the same and sends nothing, so no one can flood a mailbox through these forms.
MAIL_PER_ADDRESS = 5
MAIL_REFILL_SECONDS = 60 * 60


def _audit(action: str, *, actor: Principal | None, user: User, summary: dict[str, Any] | None = None) -> None:
    from audit.services import audit_record

    audit_record(actor=actor, organization=None, action=action, target=user, summary=summary or {})


def _enqueue_on_commit(task_name: str, **kwargs: str) -> None:
    """Publish an accounts task once the current transaction commits (at once outside one). A broker that cannot be
    reached is logged and counted (controlplane.tasks), never raised into the request, and no sweep finds the email
    again (nothing was stored): the person asks again."""
    from accounts import tasks  # the tasks call these services

    enqueue_on_commit(getattr(tasks, task_name), **kwargs)


def _mail_allowed(form: str, email: str) -> bool:
    """Whether the `form` (signup or reset) may send one more email to `email`. Keyed on the address as typed, folded
    as sign-in folds it (so its spellings share one allowance), never on whether an account has it: the answer tells
    nothing. The bucket lives in Redis (in this process while Redis is down, as the API's rate limits do)."""
    from accounts.signin import email_fold
    from controlplane.buckets import Bucket, take

    digest = hashlib.sha256(email_fold(email).encode()).hexdigest()
    bucket = Bucket(
        level="mail", key=f"mail:{form}:{digest}", capacity=MAIL_PER_ADDRESS, refill_per_second=1 / MAIL_REFILL_SECONDS
    )
    return take([bucket]).allowed


def _normalize_email(email: str) -> str:
    return User.objects.normalize_email(str(email or "").strip()).lower()


def _validate_password(password: str, *, email: str, full_name: str) -> None:
    if not password:
        raise ValidationFailed({"password": "Choose a password."})
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


def user_signup_request(*, email: str, full_name: str = "", organization_name: str = "") -> None:
    """Start a sign-up: a task emails a confirmation link, or, when the address already has an account, a note
    saying so (with a link to reset the password). The caller answers "check your email" either way.

    No password is asked here: whoever follows the link chooses it (user_signup_confirm), so that no one can
    prepare an account for someone else's address with a password of their own."""
    email = _normalize_email(email)
    errors = {}
    try:
        # The address as the account would store it, lower case: that can be no address at all ('İ' becomes an i and
        # a combining dot), which the link's page could then not create.
        User._meta.get_field("email").run_validators(email)
    except ValidationError:
        errors["email"] = "Enter a valid email address."
    for field, value in (("full_name", full_name), ("organization_name", organization_name)):
        found = find_control_character(value)
        if found is not None:
            errors[field] = control_character_message(*found)
    if errors:
        raise ValidationFailed(errors)
    if not _mail_allowed("signup", email):
        return
    _enqueue_on_commit("send_signup_email", email=email, full_name=full_name, organization_name=organization_name)


def signup_email_send(*, email: str, full_name: str = "", organization_name: str = "") -> None:
    """The email of a sign-up (run by the accounts.send_signup_email task, never in the request)."""
    email = _normalize_email(email)
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
    # Nothing is stored until the link is followed: the link carries the request, encrypted, and expires after a
    # day. It holds no password: the one who follows it chooses it.
    token = crypto.encrypt_str(
        json.dumps(
            {"email": email, "full_name": full_name, "organization_name": organization_name, "iat": int(time.time())}
        )
    )
    link = f"{settings.PUBLIC_URL}{reverse('console:signup-confirm')}?token={token}"
    send_mail(
        subject="Confirm your email to create your MQTT Cloud account",
        message=(
            f"Welcome to MQTT Cloud.\n\nConfirm {email} and choose your password to create your account (the link "
            f"works for 24 hours):\n{link}\n\nIf you did not sign up, ignore this message: no account was created.\n"
        ),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[email],
    )


def signup_token_email(token: str) -> str | None:
    """The address a confirmation link is for, or None if the link is not valid (any more)."""
    data = _signup_token(token)
    return data["email"] if data else None


class _SignupRequest(TypedDict, total=False):
    """What a confirmation link carries, encrypted (signup_email_send). Only the email is read unconditionally."""

    email: Required[str]
    full_name: str
    organization_name: str
    iat: int


def _signup_token(token: str) -> _SignupRequest | None:
    if not isinstance(token, str) or not token or len(token) > 4096:
        return None
    try:
        data: _SignupRequest = json.loads(crypto.decrypt_str(token))
    except (ValueError, UnicodeError):
        return None
    if not isinstance(data, dict) or time.time() - int(data.get("iat", 0)) > SIGNUP_LINK_TTL_SECONDS:
        return None
    return data


@transaction.atomic
def user_signup_confirm(*, token: str, password: str) -> tuple[User, Organization]:
    """Create the account a confirmation link asked for, with the password chosen on the link's page: the user,
    their organization (as Owner) and its Default project. Returns (user, organization).

    A password inside the link (links sent before the password moved here) is ignored."""
    from organizations.services import organization_create

    data = _signup_token(token)
    if data is None:
        raise ValidationFailed({"token": "This link is not valid or has expired: sign up again."})
    email = data["email"]
    if User.objects.filter(email__iexact=email).exists():
        raise Conflict(
            f"An account for {email} already exists: sign in, or reset your password.", code="account-exists"
        )
    try:
        # A link mailed before sign-up checked the address in lower case, as it is stored (user_signup_request).
        User._meta.get_field("email").run_validators(email)
    except ValidationError:
        raise ValidationFailed(
            f"{email} is not a valid email address once in lower case: sign up again with another."
        ) from None
    # Links sent before names were refused control characters may carry them: made spaces.
    full_name, organization_name = (
        " ".join(CONTROL_CHARACTERS.sub(" ", str(data.get(field) or "")).split())
        for field in ("full_name", "organization_name")
    )
    _validate_password(password, email=email, full_name=full_name)
    user = User(email=email, full_name=full_name)
    user.set_password(password)
    model_clean(user, exclude=["password"])
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:  # the same link followed twice at once
        raise Conflict(f"An account for {email} already exists: sign in.", code="account-exists") from None
    organization = organization_create(
        name=organization_name or f"{full_name or email.split('@')[0]}'s organization"[:100], owner=user
    )
    return user, organization


# --- Password reset --------------------------------------------------------------------------------------------

RESET_SUBJECT_TEMPLATE = "accounts/password_reset_subject.txt"
RESET_EMAIL_TEMPLATE = "accounts/password_reset_email.txt"


def password_reset_request(*, email: str) -> None:
    """Ask for a password reset link for `email`. The request only enqueues the task that looks the address up and
    emails an active account: it answers in the same time whether or not one exists."""
    email = str(email or "").strip()
    if not _mail_allowed("reset", email):
        return
    _enqueue_on_commit("send_password_reset_email", email=email)


def password_reset_email_send(*, email: str) -> int:
    """Email a reset link to each active account with this address (one at most), run by the
    accounts.send_password_reset_email task. Accounts that never had a password (created by an operator) are
    reached too. Links are built on PUBLIC_URL. Returns the number of emails sent."""
    sent = 0
    for user in User.objects.filter(email__iexact=email, is_active=True):
        context = {
            "email": user.email,
            "uid": urlsafe_base64_encode(force_bytes(user.pk)),
            "token": default_token_generator.make_token(user),
            "public_url": settings.PUBLIC_URL,
        }
        subject = " ".join(loader.render_to_string(RESET_SUBJECT_TEMPLATE, context).split())
        body = loader.render_to_string(RESET_EMAIL_TEMPLATE, context)
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [user.email])
        sent += 1
    return sent


# --- Account state ---------------------------------------------------------------------------------------------


@transaction.atomic
def user_set_active(*, user: User, actor: Principal | None, active: bool) -> User:
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
def user_password_change(*, user: User, actor: Principal | None, password: str, how: str) -> User:
    """Set the user's password (`how`: change or reset; the caller's form validated it) and record the change in the
    same transaction. The new hash ends the user's other sessions: Django compares each session's hash of it on every
    request."""
    user.set_password(password)
    user.save(update_fields=["password"])
    _audit("user.password_change", actor=actor, user=user, summary={"email": user.email, "how": how})
    return user
