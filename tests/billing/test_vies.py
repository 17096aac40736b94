import socket

import pytest

from billing.vies import check_vat_vies
from tests.fakes.vies import FakeVies


@pytest.fixture
def vies():
    with FakeVies() as fake:
        fake.register("FR", "40303265045", name="SA ODIGEO", address="1 RUE DES TESTS\n75001 PARIS")
        fake.register("EL", "094259216", name="GREEK SA", address="ATHENS")
        yield fake


def test_valid_with_name_and_address_when_number_registered(vies):
    result = check_vat_vies("FR", "FR 403 032 650 45", url=vies.url)
    assert result.valid is True
    assert result.name == "SA ODIGEO"
    assert result.address == "1 RUE DES TESTS\n75001 PARIS"
    assert vies.requests == [{"countryCode": "FR", "vatNumber": "40303265045"}]


def test_greece_is_sent_as_el_when_address_country_is_gr(vies):
    result = check_vat_vies("GR", "GR094259216", url=vies.url)
    assert result.valid is True
    assert vies.requests[-1] == {"countryCode": "EL", "vatNumber": "094259216"}


def test_invalid_without_name_when_number_not_registered(vies):
    result = check_vat_vies("FR", "FR12345678901", url=vies.url)
    assert result.valid is False
    assert result.name is None and result.address is None and result.error is None


def test_unknown_with_error_code_when_member_state_unavailable(vies):
    vies.outage = "MS_UNAVAILABLE"
    result = check_vat_vies("FR", "FR40303265045", url=vies.url)
    assert result.valid is None
    assert result.error == "MS_UNAVAILABLE"


def test_unknown_when_vies_answers_server_error(vies):
    vies.outage = "HTTP_500"
    result = check_vat_vies("FR", "FR40303265045", url=vies.url)
    assert (result.valid, result.error) == (None, "SERVICE_UNAVAILABLE")


def test_invalid_when_vies_rejects_input(vies):
    result = check_vat_vies("FR", "", url=vies.url)
    assert (result.valid, result.error) == (False, "INVALID_INPUT")


def test_unknown_when_vies_does_not_answer_within_timeout(vies):
    vies.delay_seconds = 1.0
    result = check_vat_vies("FR", "FR40303265045", url=vies.url, timeout=0.2)
    assert result.valid is None
    assert result.error.startswith("unreachable")


def test_unknown_without_raising_when_nothing_listens():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = check_vat_vies("DE", "DE136695976", url=f"http://127.0.0.1:{port}/check-vat-number", timeout=2)
    assert result.valid is None
    assert "ConnectionError" in result.error
