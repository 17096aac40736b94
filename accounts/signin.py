"""The sign-in throttle and the audit trail of signing in and out, shared by the console and the admin.

After SIGNIN_MAX_FAILURES failed attempts within SIGNIN_FAILURE_WINDOW_SECONDS, for one account (the email tried,
existing or not) or from one client address, sign-in is refused for SIGNIN_LOCKOUT_SECONDS, twice as long at each
further lock-out (at most SIGNIN_LOCKOUT_MAX_SECONDS). Every check of a password or a code is counted before it is
made (signin_begin) and forgiven once it succeeds, so guesses sent at once are held to the limit too. Counts live in
PostgreSQL: a stopped Redis changes nothing. Never says whether an account exists.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import unicodedata

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import SignInThrottle, User
from controlplane.errors import RateLimited, ValidationFailed

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


def email_fold(text: str) -> str:
    """One spelling for every way of typing an email that could find the same account. upper() first, as the account
    lookup compares with PostgreSQL's UPPER(), which makes dotless ı and long ſ into I and S where casefold() alone
    keeps them apart; then casefold() and NFKC. It must merge at least what the lookup merges even when no account
    exists, or an unknown address would lock differently from an existing one."""
    return unicodedata.normalize("NFKC", text.upper().casefold())[:254]


def account_key(email) -> tuple[str, User | None]:
    """The account's throttle key and the account, if any: the stored email of the account the sign-in would find
    (however its address was typed), else the folded address typed."""
    typed = str(email or "").strip()
    user = User.objects.filter(email__iexact=typed).order_by("pk").first() if typed else None
    return email_fold(user.email if user is not None else typed), user


def _address(ip) -> str:
    return str(ip or "unknown")[:254]


class Account:
    """The audit target of an attempt on an email no account has (target type "account", no id)."""

    public_id = ""


@dataclasses.dataclass
class Attempt:
    """One check of a password or a code, already counted as a failure (signin_begin). `lockout` set: refused, check
    nothing. Otherwise the caller checks, then calls exactly one of signin_failed, signin_passed, signin_succeeded."""

    email: str  # the account key
    address: str
    target: User | Account
    lockout: Lockout | None = None
    # The lock-out this attempt's count started (the last allowed check), reported if the check fails.
    started: Lockout | None = None
    # Per throttle row this attempt counted on: what its counting changed, to undo it if the check succeeds.
    _undo: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def refused(self) -> bool:
        return self.lockout is not None


def _lock_period(lockouts: int) -> datetime.timedelta:
    seconds = settings.SIGNIN_LOCKOUT_SECONDS * 2 ** max(0, lockouts - 1)
    return datetime.timedelta(seconds=min(seconds, settings.SIGNIN_LOCKOUT_MAX_SECONDS))


def _row_for_update(scope: str, key: str) -> SignInThrottle:
    # Insert-if-missing then lock: two concurrent attempts can never both start a fresh count.
    SignInThrottle.objects.bulk_create([SignInThrottle(scope=scope, key=key)], ignore_conflicts=True)
    return SignInThrottle.objects.select_for_update().get(scope=scope, key=key)


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


_STATE = ("failures", "window_started_at", "lockouts", "locked_until")


@transaction.atomic
def signin_begin(*, email, ip, user: User | None = None) -> Attempt:
    """Count an attempt to sign in as `email` (or as `user`, for a code or a password asked again) from `ip` before
    its password or code is checked: under the throttle rows' locks, so that of guesses sent at once no more than
    the limit get checked. Returns the attempt, refused when the account or the address is locked."""
    if user is not None:
        key = email_fold(user.email)
    else:
        key, user = account_key(email)
    attempt = Attempt(email=key, address=_address(ip), target=user or Account())
    now = timezone.now()
    window = datetime.timedelta(seconds=settings.SIGNIN_FAILURE_WINDOW_SECONDS)
    # Always account, then address: one order for every attempt, so that concurrent ones queue, never deadlock.
    # (A form posted without an email counts against its address only.)
    rows = [_row_for_update(Scope.ACCOUNT, key)] if key else []
    rows.append(_row_for_update(Scope.ADDRESS, attempt.address))
    locked = [row.locked_until for row in rows if row.locked_until is not None and row.locked_until > now]
    if locked:
        attempt.lockout = Lockout(max(locked))
        return attempt
    for row in rows:
        before = {name: getattr(row, name) for name in _STATE}
        if row.window_started_at is None or now - row.window_started_at > window:
            row.failures, row.window_started_at = 0, now
        if row.locked_until is not None and now - row.locked_until > datetime.timedelta(days=1):
            row.lockouts = 0  # a day without a lock-out: the next one is short again
        row.failures += 1
        locks = row.failures >= settings.SIGNIN_MAX_FAILURES
        if locks:
            # This is the last check allowed: it goes ahead, and anything after it waits.
            row.lockouts += 1
            row.locked_until = now + _lock_period(row.lockouts)
            row.failures, row.window_started_at = 0, None
            attempt.started = Lockout(
                max(row.locked_until, attempt.started.until) if attempt.started else row.locked_until
            )
        attempt._undo[(row.scope, row.key)] = (before, {name: getattr(row, name) for name in _STATE}, locks)
        row.updated_at = now
        row.save()
    return attempt


@transaction.atomic
def signin_failed(attempt: Attempt, *, reason: str) -> Lockout | None:
    """The check was wrong (wrong password, unknown account, wrong code, wrong password asked again): the count
    stands. Audited as login.failed (and login.locked when this was the last check allowed); returns that lock-out."""
    for (scope, key), (_before, after, locks) in attempt._undo.items():
        if locks:
            _audit(
                "login.locked",
                actor_user=None,
                target=attempt.target,
                summary={
                    "email": attempt.email,
                    "scope": scope,
                    "key": key,
                    "lockouts": after["lockouts"],
                    "locked_until": after["locked_until"].isoformat(),
                },
            )
    _audit("login.failed", actor_user=None, target=attempt.target, summary={"email": attempt.email, "reason": reason})
    return attempt.started


@transaction.atomic
def signin_passed(attempt: Attempt) -> None:
    """The check was right (a password before its second factor, a password asked again): the attempt counts as no
    failure. Its count is taken back, and so is the lock-out it started, unless the row changed meanwhile."""
    for (scope, key), (before, after, _locks) in attempt._undo.items():
        row = SignInThrottle.objects.select_for_update().filter(scope=scope, key=key).first()
        if row is None:
            continue  # staff lifted it meanwhile
        if {name: getattr(row, name) for name in _STATE} == after:
            for name, value in before.items():
                setattr(row, name, value)
        elif row.failures > 0 and row.window_started_at == after["window_started_at"]:
            row.failures -= 1  # others counted since: take back this one only
        else:
            continue
        row.save(update_fields=list(_STATE))
    attempt._undo.clear()


@transaction.atomic
def signin_succeeded(attempt: Attempt | None, *, user: User, two_factor: bool) -> None:
    """Signed in (after `attempt`, or with no check at all: a sign-up link): forget the account's failures and record
    login.succeeded. The address keeps its count, less this attempt: signing in to an account of one's own must not
    reset what was tried against others from there. The account keeps its lock-outs so far: its owner signing in
    between lock-outs that someone guessing its second factor causes must not make the next one short again (a day
    without a lock-out does, signin_begin)."""
    if attempt is not None:
        signin_passed(attempt)
    account = SignInThrottle.objects.filter(scope=Scope.ACCOUNT, key=email_fold(user.email))
    account.filter(lockouts=0).delete()
    account.update(failures=0, window_started_at=None, updated_at=timezone.now())
    _audit("login.succeeded", actor_user=user, target=user, summary={"email": user.email, "two_factor": two_factor})


def signout(*, user: User) -> None:
    """Record that `user` signed out, in the transaction that deletes their session (accounts.views.SignOutView):
    as login.succeeded, in no organization, with the user as actor."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("signout must run inside the transaction that ends the session")
    _audit("logout", actor_user=user, target=user, summary={"email": user.email})


class SignInLocked(RateLimited):
    """The account or the address is locked out: nothing was checked."""

    code = "signin-locked"

    def __init__(self, lockout: Lockout) -> None:
        super().__init__(lockout.message, retry_after=lockout.retry_after)
        self.lockout = lockout


def reauthenticate(*, user: User, password: str, ip) -> None:
    """Check a signed-in user's password again before a sensitive change (password change, two-factor on or off,
    new recovery codes). Whoever holds a session can use such a page as a password oracle, so it is one more sign-in
    attempt under the same throttle. Raises SignInLocked, or ValidationFailed on the password field.

    Not atomic on purpose: the failure must stay counted when the caller's change is refused."""
    attempt = signin_begin(email=None, user=user, ip=ip)
    if attempt.lockout is not None:
        raise SignInLocked(attempt.lockout)
    if not password or not user.check_password(password):
        lockout = signin_failed(attempt, reason="reauthentication")
        if lockout is not None:
            raise SignInLocked(lockout)
        raise ValidationFailed({"password": "The password is not correct."})
    signin_passed(attempt)


def prune_throttles() -> int:
    """Forget rows untouched for two days: they count toward no window and hold no lock (hourly, by beat)."""
    cutoff = timezone.now() - datetime.timedelta(days=2)
    deleted, _ = SignInThrottle.objects.filter(updated_at__lt=cutoff).delete()
    return deleted
