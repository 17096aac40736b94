"""Client of the European Commission's VIES REST API (check-vat-number), the live check of an EU VAT number.

Owns the wire format and the mapping of VIES answers to valid / invalid / unknown. A check names our own VAT number
as the requester, so VIES answers with a consultation number (requestIdentifier), the proof that we checked. It must
never raise for an unreachable or failing VIES (that is `valid=None`: the caller retries later).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import requests

DEFAULT_URL = "https://ec.europa.eu/taxation_customs/vies/rest-api/check-vat-number"
DEFAULT_TIMEOUT = 10.0

# Errors that say something about the number itself rather than about VIES being busy or down.
_PERMANENT_ERRORS = frozenset({"INVALID_INPUT"})
# VIES writes this placeholder when a member state does not disclose name or address.
_UNDISCLOSED = {"", "---"}

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ViesResult:
    valid: bool | None
    name: str | None = None
    address: str | None = None
    # VIES error code (MS_UNAVAILABLE, TIMEOUT, ...) or a transport error when valid is None.
    error: str | None = None
    # The consultation number VIES gives a check that named a requester, and the date it gives the answer.
    request_identifier: str | None = None
    request_date: str | None = None


def _vies_country(country: str) -> str:
    code = country.strip().upper()
    return "EL" if code == "GR" else code


def _national_part(country_code: str, number: str) -> str:
    compact = re.sub(r"[\s.\-/]", "", number).upper()
    if compact.startswith(country_code) or (country_code == "EL" and compact.startswith("GR")):
        compact = compact[2:]
    return compact


def _disclosed(value: object) -> str | None:
    if not isinstance(value, str) or value.strip() in _UNDISCLOSED:
        return None
    return value.strip()


def check_vat_vies(
    country: str,
    number: str,
    *,
    requester: str | None = None,
    url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    session: requests.Session | None = None,
) -> ViesResult:
    """Ask VIES whether `number` is a registered VAT number of `country` (GR/EL and XI accepted). `requester` is our
    own EU VAT number with its prefix (DE136695976): VIES then returns a consultation number."""
    country_code = _vies_country(country)
    body = {"countryCode": country_code, "vatNumber": _national_part(country_code, number)}
    if requester:
        requester_code = _vies_country(requester[:2])
        body["requesterMemberStateCode"] = requester_code
        body["requesterNumber"] = _national_part(requester_code, requester)
    http = session or requests
    try:
        response = http.post(url or DEFAULT_URL, json=body, timeout=timeout, headers={"Accept": "application/json"})
    except requests.RequestException as exc:
        logger.warning("VIES unreachable: %s", exc)
        return ViesResult(valid=None, error=f"unreachable: {type(exc).__name__}")
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return ViesResult(valid=None, error=f"HTTP {response.status_code}: not a JSON object")

    # VIES reports errors either with a non-2xx status or with HTTP 200 and actionSucceed=false; both carry
    # errorWrappers=[{"error": CODE, "message": ...}].
    wrappers = payload.get("errorWrappers") or []
    codes = [w.get("error") for w in wrappers if isinstance(w, dict) and w.get("error")]
    user_error = payload.get("userError")
    if isinstance(user_error, str) and user_error not in {"VALID", "INVALID"}:
        codes.append(user_error)
    if payload.get("actionSucceed") is False or codes or not response.ok:
        code = codes[0] if codes else f"HTTP {response.status_code}"
        if code in _PERMANENT_ERRORS:
            return ViesResult(valid=False, error=code)
        return ViesResult(valid=None, error=code)

    valid = payload.get("valid", payload.get("isValid"))
    if not isinstance(valid, bool):
        return ViesResult(valid=None, error="answer without a valid flag")
    return ViesResult(
        valid=valid,
        name=_disclosed(payload.get("name")),
        address=_disclosed(payload.get("address")),
        request_identifier=_disclosed(payload.get("requestIdentifier")),
        request_date=str(payload["requestDate"])[:40] if payload.get("requestDate") else None,
    )
