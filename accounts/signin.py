"""The sign-in throttle and the sign-in audit trail, shared by the console and the admin.

After SIGNIN_MAX_FAILURES failed attempts within SIGNIN_FAILURE_WINDOW_SECONDS, for one account (the email tried,
existing or not) or from one client address, sign-in is refused for SIGNIN_LOCKOUT_SECONDS, twice as long at each
further lock-out (at most SIGNIN_LOCKOUT_MAX_SECONDS). Counts live in PostgreSQL: a stopped Redis changes nothing.
Never says whether an account exists.
"""

from __future__ import annotations

import dataclasses
import datetime
import math

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import SignInThrottle, User

Scope = SignInThrottle.Scope


@dataclasses.dataclass(frozen=True)
class Lockout:
    until: datetime.datetime

    @property
    def retry_after(self) -> int:
        """Whole seconds until sign-in is allowed again (at least 1)."""
        return max(1, math.ceil((self.until - timezone.now()).total_seconds()))

    @property
    def message(self) -> str:
        minutes = math.ceil(self.retry_after / 60)
        when = self.until.astimezone(datetime.UTC).strftime("%H:%M UTC")
        return (
            f"Too many failed sign-in attempts. Try again in {minutes} minute{'s' if minutes != 1 else ''} (at {when})."
        )


def normalize_email(email) -> str:
    """The account key: the email as sign-in compares it (case-insensitively), cut to the column's size."""
    return str(email or "").strip().lower()[:254]


def _address(ip) -> str:
    return str(ip or "unknown")[:254]


def _keys(email: str, ip) -> list[tuple[str, str]]:
    return [(Scope.ACCOUNT, normalize_email(email)), (Scope.ADDRESS, _address(ip))]


def signin_lockout(*, email: str, ip) -> Lockout | None:
    """The lock-out in force for this account or this address, if any (the later one when both are locked)."""
    which = Q()
    for scope, key in _keys(email, ip):
        which |= Q(scope=scope, key=key)
    rows = SignInThrottle.objects.filter(which, locked_until__gt=timezone.now())
    until = max(rows.values_list("locked_until", flat=True), default=None)
    return Lockout(until) if until else None


def _lock_period(lockouts: int) -> datetime.timedelta:
    seconds = settings.SIGNIN_LOCKOUT_SECONDS * 2 ** max(0, lockouts - 1)
    return datetime.timedelta(seconds=min(seconds, settings.SIGNIN_LOCKOUT_MAX_SECONDS))


def _row_for_update(scope: str, key: str) -> SignInThrottle:
    # Insert-if-missing then lock: two concurrent failures can never both start a fresh count.
    SignInThrottle.objects.bulk_create([SignInThrottle(scope=scope, key=key)], ignore_conflicts=True)
    return SignInThrottle.objects.select_for_update().get(scope=scope, key=key)


class Account:
    """The audit target of an attempt on an email no account has (target type "account", no id)."""

    public_id = ""


def _audit(action: str, *, actor_user, target, summary: dict) -> None:
    from audit.services import audit_record
    from organizations.access import Principal

    audit_record(
        actor=Principal(user=actor_user) if actor_user is not None else None,
        organization=None,
        action=action,
        target=target,
        summary=summary,
    )


@transaction.atomic
def signin_failed(*, email: str, ip, reason: str) -> Lockout | None:
    """Count a failed attempt (wrong password, unknown account, wrong second-factor code) against the account and
    the address; returns the lock-out it caused, if any. Audited as login.failed (and login.locked)."""
    now = timezone.now()
    window = datetime.timedelta(seconds=settings.SIGNIN_FAILURE_WINDOW_SECONDS)
    email = normalize_email(email)
    # The audit names the account tried when there is one; the attempt itself has no actor.
    target = User.objects.filter(email__iexact=email).first() or Account()
    lockout = None
    for scope, key in _keys(email, ip):
        row = _row_for_update(scope, key)
        if row.window_started_at is None or now - row.window_started_at > window:
            row.failures, row.window_started_at = 0, now
        if row.locked_until is not None and now - row.locked_until > datetime.timedelta(days=1):
            row.lockouts = 0  # a day without a lock-out: the next one is short again
        row.failures += 1
        if row.failures >= settings.SIGNIN_MAX_FAILURES:
            row.lockouts += 1
            row.locked_until = now + _lock_period(row.lockouts)
            row.failures, row.window_started_at = 0, None
            lockout = Lockout(max(row.locked_until, lockout.until) if lockout else row.locked_until)
            _audit(
                "login.locked",
                actor_user=None,
                target=target,
                summary={
                    "email": email,
                    "scope": scope,
                    "key": key,
                    "lockouts": row.lockouts,
                    "locked_until": row.locked_until.isoformat(),
                },
            )
        row.updated_at = now
        row.save()
    _audit("login.failed", actor_user=None, target=target, summary={"email": email, "reason": reason})
    return lockout


@transaction.atomic
def signin_succeeded(*, user: User, two_factor: bool) -> None:
    """Forget the account's failures and record login.succeeded. The address keeps its count: signing in to an
    account of one's own must not reset what was tried against others from the same place."""
    SignInThrottle.objects.filter(scope=Scope.ACCOUNT, key=normalize_email(user.email)).delete()
    _audit("login.succeeded", actor_user=user, target=user, summary={"email": user.email, "two_factor": two_factor})


def prune_throttles() -> int:
    """Forget rows untouched for two days: they count toward no window and hold no lock (hourly, by beat)."""
    cutoff = timezone.now() - datetime.timedelta(days=2)
    deleted, _ = SignInThrottle.objects.filter(updated_at__lt=cutoff).delete()
    return deleted
