"""MQTT password hashing in mosquitto 2.0's `$7$` scheme (PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte key).

Owns turning a plaintext into a MqttCredential and rendering password-file lines; it must never store or log the
plaintext, and never emit a line mosquitto would misparse (colons or line breaks in a username).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from controlplane.validators import find_control_character
from deployments.drivers.base import MqttCredential

SALT_BYTES = 12
KEY_BYTES = 64
DEFAULT_ITERATIONS = 101  # mosquitto_passwd's default in 2.0


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _derive(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, dklen=KEY_BYTES)


def validate_mqtt_username(username: str) -> None:
    """Raise ValueError for a username that cannot live in a mosquitto password or ACL file."""
    if not username:
        raise ValueError("MQTT username must not be empty")
    if len(username.encode("utf-8")) > 65535:
        raise ValueError("MQTT username must be at most 65535 bytes of UTF-8")
    bad = [c for c in username if c in ":\r\n\x00" or c.isspace() or find_control_character(c)]
    if bad:
        raise ValueError("MQTT username must not contain ':', whitespace, line breaks or control characters")


def hash_mqtt_password(password: str, *, iterations: int = DEFAULT_ITERATIONS) -> tuple[str, str]:
    """Return (salt_b64, hash_b64) for `password`, with a fresh random salt."""
    if iterations < 1:
        raise ValueError("iterations must be positive")
    # Printable salt (hex text, SALT_BYTES long): mosquitto takes any bytes, but EMQX receives the salt as a string
    # in its user import and runs PBKDF2 over that string's bytes, so a binary salt could never be loaded there.
    salt = secrets.token_hex(SALT_BYTES // 2).encode()
    return _b64(salt), _b64(_derive(password, salt, iterations))


def make_mqtt_credential(
    *, username: str, password: str, iterations: int = DEFAULT_ITERATIONS, is_superuser: bool = False
) -> MqttCredential:
    validate_mqtt_username(username)
    salt_b64, hash_b64 = hash_mqtt_password(password, iterations=iterations)
    return MqttCredential(
        username=username, salt_b64=salt_b64, hash_b64=hash_b64, iterations=iterations, is_superuser=is_superuser
    )


def mosquitto_password_line(cred: MqttCredential) -> str:
    """`username:$7$<iterations>$<salt>$<hash>`, the line mosquitto 2.0 reads from `password_file` (no newline)."""
    validate_mqtt_username(cred.username)
    if cred.iterations < 1:
        raise ValueError("iterations must be positive")
    for part in (cred.salt_b64, cred.hash_b64):
        if not part or "$" in part or ":" in part or any(c.isspace() for c in part):
            raise ValueError("salt and hash must be non-empty base64")
    return f"{cred.username}:$7${cred.iterations}${cred.salt_b64}${cred.hash_b64}"


def parse_mosquitto_password_line(line: str) -> MqttCredential:
    """Read one `$7$` line as written by mosquitto_passwd; other schemes (`$6$`) raise ValueError."""
    username, sep, rest = line.strip().partition(":")
    parts = rest.split("$")
    if not sep or len(parts) != 5 or parts[0] != "" or parts[1] != "7":
        raise ValueError("not a mosquitto $7$ password line")
    return MqttCredential(username=username, iterations=int(parts[2]), salt_b64=parts[3], hash_b64=parts[4])


def verify_mqtt_password(password: str, cred: MqttCredential) -> bool:
    try:
        salt = base64.b64decode(cred.salt_b64, validate=True)
        expected = base64.b64decode(cred.hash_b64, validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(_derive(password, salt, cred.iterations), expected)
