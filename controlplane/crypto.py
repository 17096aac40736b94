"""Field encryption for secrets the control plane must read back (kubeconfigs, broker credentials, webhook secrets,
stored API responses, private keys): Fernet.

Keys come from settings.FIELD_ENCRYPTION_KEYS (newest first, so old tokens still decrypt after a rotation); outside
production a key derived from SECRET_KEY stands in. It never logs or returns a plaintext it was not asked for.
"""

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _fernet() -> MultiFernet:
    keys = list(settings.FIELD_ENCRYPTION_KEYS)
    if not keys:
        if settings.PRODUCTION:
            raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is required when CONTROLPLANE_ENV=production")
        digest = hashlib.sha256(b"controlplane-field-encryption:" + settings.SECRET_KEY.encode()).digest()
        keys = [base64.urlsafe_b64encode(digest).decode()]
    return MultiFernet([Fernet(key) for key in keys])


def encrypt_str(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode("utf-8")).decode("ascii")


def decrypt_str(token: str) -> str:
    """The plaintext of `token`; "" for an empty token. Raises ValueError when no configured key opens it."""
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode("ascii")).decode("utf-8")
    except InvalidToken:
        raise ValueError("cannot decrypt: the token was made with a key that is not configured") from None


def encrypt_bytes(plaintext: bytes) -> bytes:
    return _fernet().encrypt(plaintext)


def decrypt_bytes(token: bytes) -> bytes:
    """The plaintext of `token`. Raises ValueError when no configured key opens it."""
    try:
        return _fernet().decrypt(bytes(token))
    except InvalidToken:
        raise ValueError("cannot decrypt: the token was made with a key that is not configured") from None
