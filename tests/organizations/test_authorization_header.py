"""A malformed Authorization header answers 401 problem+json, never 500, and never falls back to a session."""

import pytest

pytestmark = pytest.mark.django_db

MALFORMED = {
    "blank": "",
    "only spaces": "     ",
    "tab": "\t",
    "unknown scheme": "Basic dXNlcjpwYXNz",
    "token scheme": "Token cpk_0123abcd_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    "scheme only": "Bearer",
    "scheme and spaces": "Bearer    ",
    "two keys": "Bearer cpk_a cpk_b",
    "not a key": "Bearer hello",
    "prefix only": "Bearer cpk_",
    "truncated after prefix": "Bearer cpk_0123abcd",
    "truncated random part": "Bearer cpk_0123abcd_abc",
    "uppercase prefix": "Bearer CPK_0123ABCD_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    "nul byte": "Bearer cpk_0123\x00abc_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    "control characters": "Bearer cpk_0123abcd_\x01\x02\x03abcdefghijklmnopqrstuvwxyz012345678",
    "latin-1": "Bearer cpk_0123abcd_\xe9\xe9\xe9abcdefghijklmnopqrstuvwxyz0123456789",
    "very long": "Bearer cpk_0123abcd_" + "a" * 10000,
    "long prefix": "Bearer cpk_" + "0" * 5000 + "_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
}


@pytest.mark.parametrize("header", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("method", ["get", "post"])
def test_malformed_authorization_answers_401_problem_when_sent(header, method, owner_org, api):
    url = f"/api/v1/organizations/{owner_org.id}" + ("/projects" if method == "post" else "")
    response = getattr(api, method)(
        url, {"name": "x"} if method == "post" else None, format="json", HTTP_AUTHORIZATION=header
    )
    assert response.status_code == 401, (header[:40], response.status_code, response.content[:200])
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 401 and response.json()["detail"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_malformed_authorization_is_not_ignored_in_favour_of_a_session(owner_org, api):
    api.force_login(owner_org.owner)
    url = f"/api/v1/organizations/{owner_org.id}"
    assert api.get(url).status_code == 200
    assert api.get(url, HTTP_AUTHORIZATION="Basic Zm9vOmJhcg==").status_code == 401


def test_valid_key_still_authenticates_when_scheme_is_lowercase(owner_org, api):
    response = api.get(f"/api/v1/organizations/{owner_org.id}", HTTP_AUTHORIZATION=f"bearer {owner_org.owner_secret}")
    assert response.status_code == 200
