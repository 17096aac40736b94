"""TOTP codes computed the way an authenticator app computes them (pyotp, from the device's key), and enrolment
through the real two-factor services."""

import base64
import time

import pyotp


def totp_code(device, *, step: int | None = None) -> str:
    """The code the app shows at time step `step` (now by default) for this device."""
    totp = pyotp.TOTP(base64.b32encode(device.bin_key).decode(), digits=device.digits, interval=device.step)
    return totp.at(((step if step is not None else _now_step(device)) * device.step) + device.t0)


def _now_step(device) -> int:
    return int((time.time() - device.t0) // device.step)


def next_code(device) -> str:
    """A code the device will accept now: django-otp takes each time step once, so after a code of this step was
    used it takes the next step's (within its tolerance of one step), and after that it waits for the clock."""
    device.refresh_from_db()
    for _ in range(3):
        now = _now_step(device)
        last = device.last_t if device.last_t is not None else -1
        if last < now:
            return totp_code(device, step=now)
        if last < now + device.tolerance:
            return totp_code(device, step=last + 1)
        time.sleep(device.step - (time.time() - device.t0) % device.step + 0.1)
    raise AssertionError("no usable TOTP step")


def enrol(user):
    """Two-factor authentication turned on for `user` through the services, as the setup page does it. Returns
    (TOTP device, recovery codes)."""
    from accounts import two_factor

    device = two_factor.two_factor_begin(user=user)
    device, codes = two_factor.two_factor_confirm(user=user, token=totp_code(device))
    return device, codes


def admin_sign_in(client, user, device, password: str):
    """Sign in to the admin with the password and a real code, as staff do. Returns the response."""
    return client.post(
        "/admin/login/?next=/admin/",
        {
            "username": user.email,
            "password": password,
            "otp_device": device.persistent_id,
            "otp_token": next_code(device),
            "next": "/admin/",
        },
    )


def staff_sign_in(client, user, password: str) -> None:
    """Sign `client` in to the admin as `user`, enrolling two-factor for them first if they have none: the admin
    takes no session without a verified second factor."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.filter(user=user, confirmed=True).first() or enrol(user)[0]
    response = admin_sign_in(client, user, device, password)
    assert response.status_code == 302, response.content[:500]
