"""Two-factor authentication of console users: a TOTP authenticator app (django-otp) and 10 single-use recovery codes.

Every change is audited. Turning it on or off ends the user's other sessions; new recovery codes leave them signed in,
but no session stays verified by an old code (see recovery_codes_regenerate). Callers ask for the user's password
first (accounts.signin.reauthenticate): a session alone must never be enough to enrol, renew codes or turn it off.
Nothing here decides who must use it: organizations that require it say so (organizations.access.two_factor_satisfied),
and the admin requires it of all staff.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import math

from django.db import transaction
from django.utils import timezone
from django_otp import devices_for_user, user_has_device
from django_otp import verify_token as otp_verify_token
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import User
from accounts.services import user_sessions_end
from controlplane.errors import Conflict, NotFound, ValidationFailed

RECOVERY_CODE_COUNT = 10


def _audit(action: str, *, user: User, summary: dict | None = None) -> None:
    from audit.services import audit_record
    from organizations.access import Principal

    audit_record(actor=Principal(user=user), organization=None, action=action, target=user, summary=summary or {})


def two_factor_enabled(user) -> bool:
    return user is not None and user.is_authenticated and user_has_device(user, confirmed=True)


def pending_device(user, *, device_id) -> TOTPDevice | None:
    """The authenticator `device_id` if it is the user's and still being set up (not yet confirmed by a code)."""
    if not isinstance(device_id, int):
        return None
    return TOTPDevice.objects.filter(user=user, confirmed=False, pk=device_id).first()


def recovery_codes_left(user) -> int:
    return StaticToken.objects.filter(device__user=user, device__confirmed=True).count()


def secret_base32(device: TOTPDevice) -> str:
    """The device's key as authenticator apps take it when typed in."""
    return base64.b32encode(device.bin_key).decode("ascii").rstrip("=")


def qr_svg(device: TOTPDevice) -> bytes:
    """The device's otpauth:// URL as an SVG QR code (no script, no external reference)."""
    import qrcode
    import qrcode.image.svg

    image = qrcode.make(device.config_url, image_factory=qrcode.image.svg.SvgPathImage, box_size=12, border=2)
    out = io.BytesIO()
    image.save(out)
    return out.getvalue()


@transaction.atomic
def two_factor_begin(*, user: User) -> TOTPDevice:
    """A fresh authenticator key to scan; it counts only once a code from it is confirmed. The caller asked for the
    password first, and shows the key only to the session that began (any earlier pending key is dropped)."""
    if TOTPDevice.objects.filter(user=user, confirmed=True).exists():
        raise Conflict("Two-factor authentication is already on.", code="two-factor-already-on")
    dropped = TOTPDevice.objects.filter(user=user, confirmed=False).delete()[0]
    device = TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=False)
    # A stored key that a code can turn into the account's second factor: audited, as its confirmation is.
    _audit("two_factor.setup_begin", user=user, summary={"device": device.name, "pending_dropped": dropped})
    return device


def verified_by_recovery_code(user) -> bool:
    """Whether a recovery code verified this request's session (django-otp's middleware sets `otp_device`)."""
    return isinstance(getattr(user, "otp_device", None), StaticDevice)


def _new_recovery_codes(user: User) -> tuple[StaticDevice, list[str]]:
    # A new device, not new codes on the old one: a session is verified by a device (its id is in the session), so
    # the sessions the old codes verified are verified no more.
    StaticDevice.objects.filter(user=user).delete()
    device = StaticDevice.objects.create(user=user, name="Recovery codes", confirmed=True)
    codes = [StaticToken.random_token() for _ in range(RECOVERY_CODE_COUNT)]
    StaticToken.objects.bulk_create(StaticToken(device=device, token=code) for code in codes)
    return device, codes


@transaction.atomic
def two_factor_confirm(*, user: User, token: str, device_id: int | None = None) -> tuple[TOTPDevice, list[str]]:
    """Turn two-factor authentication on with a first code from the authenticator being set up (`device_id`, or the
    latest one). Returns the device and the recovery codes, which exist in clear only in this return value: show
    them once."""
    pending = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=False)
    if device_id is not None:
        pending = pending.filter(pk=device_id)
    device = pending.order_by("-id").first()
    if device is None:
        raise NotFound("Start setting up two-factor authentication first.")
    if not device.verify_token(_clean_code(token)):
        raise ValidationFailed({"code": "That code is not valid: check the time on your phone and try the next one."})
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    _recovery, codes = _new_recovery_codes(user)
    user_sessions_end(user=user)
    _audit("two_factor.enable", user=user, summary={"device": device.name, "recovery_codes": len(codes)})
    return device, codes


@transaction.atomic
def recovery_codes_regenerate(*, user: User) -> tuple[StaticDevice, list[str]]:
    """New recovery codes (the old ones stop working); the caller asked for the password again. Returns their device
    and the codes, in clear only here: show them once.

    New codes are what a person makes after one leaked, so no session stays verified by the old ones: one opened with
    a leaked code must give a second factor again. The session asking for the new codes is the person's own (it gave
    the password again): if an old code verified it, the caller verifies it with the returned device (django-otp's
    login). Sessions verified by the authenticator app are not affected."""
    if not TOTPDevice.objects.filter(user=user, confirmed=True).exists():
        raise Conflict("Two-factor authentication is off.", code="two-factor-off")
    device, codes = _new_recovery_codes(user)
    _audit("two_factor.recovery_codes_regenerate", user=user, summary={"recovery_codes": len(codes)})
    return device, codes


@transaction.atomic
def two_factor_disable(*, user: User) -> None:
    """Turn two-factor authentication off (the caller asked for the password again); ends the user's other
    sessions."""
    removed = TOTPDevice.objects.filter(user=user).delete()[0] + StaticDevice.objects.filter(user=user).delete()[0]
    if not removed:
        raise Conflict("Two-factor authentication is off.", code="two-factor-off")
    user_sessions_end(user=user)
    _audit("two_factor.disable", user=user)


def _clean_code(token) -> str:
    return "".join(str(token or "").split()).lower()[:16]


@dataclasses.dataclass(frozen=True)
class Verification:
    device: object | None  # the device that accepted the code, or None
    wait_seconds: int = 0  # > 0: the device refused to check the code now (it backs off after wrong codes)


def two_factor_verify(*, user: User, token: str) -> Verification:
    """Check a code: the authenticator's current code, or an unused recovery code (which is then used up). Each
    device backs off after wrong codes (1, 2, 4… seconds, django-otp), and a TOTP code is accepted once only."""
    code = _clean_code(token)
    if not code:
        return Verification(None)
    wait = 0
    for device in devices_for_user(user, confirmed=True):
        # Six digits come from the app; anything else is a recovery code. A code is tried on its own kind of device
        # only, so a mistyped one never counts against (and slows down) the other.
        if isinstance(device, TOTPDevice) != (len(code) == 6 and code.isdigit()):
            continue
        allowed, extra = device.verify_is_allowed()
        if not allowed:
            until = (extra or {}).get("locked_until")
            wait = max(wait, math.ceil((until - timezone.now()).total_seconds()) if until else 1, 1)
            continue
        verified = otp_verify_token(user, device.persistent_id, code)
        if verified is not None:
            return Verification(verified)
    return Verification(None, wait)
