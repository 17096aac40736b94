from datetime import date
from decimal import Decimal

import pytest

from billing.tax import (
    REVERSE_CHARGE_MENTION,
    TaxTreatment,
    VatStatus,
    tax_treatment,
    validate_postal_code,
    validate_tax_id,
)
from billing.vat_rates import EU_MEMBER_STATES, STANDARD_RATES, UnknownRate, is_eu, standard_rate

ON = date(2025, 10, 1)
FR_VALID = "FR40303265045"
FR_BAD_CHECKSUM = "FR40303265046"


def decide(customer_country, *, is_business, tax_id=None, on=ON):
    check = validate_tax_id(customer_country, tax_id)
    return tax_treatment(
        seller_country="DE",
        customer_country=customer_country,
        is_business=is_business,
        vat_status=check.status,
        on=on,
        tax_id=check.normalized or "",
    )


def test_reverse_charge_at_zero_with_mention_when_french_company_number_confirmed_by_vies():
    decision = tax_treatment(
        seller_country="DE", customer_country="FR", is_business=True, vat_status="valid", on=ON, tax_id=FR_VALID
    )
    assert decision.treatment is TaxTreatment.REVERSE_CHARGE
    assert decision.rate == Decimal(0)
    assert decision.mention == REVERSE_CHARGE_MENTION
    assert "Article 196" in decision.mention and "2006/112/EC" in decision.mention


def test_french_consumer_rate_with_a_note_when_number_only_passed_the_format_check():
    # Art. 18(1)(a) of Regulation 282/2011: without VIES' confirmation the buyer is taxed as a consumer of France.
    decision = decide("FR", is_business=True, tax_id=FR_VALID)
    assert validate_tax_id("FR", FR_VALID).status is VatStatus.FORMAT_VALID
    assert (decision.treatment, decision.rate, decision.mention) == (TaxTreatment.EU_CONSUMER, Decimal("20"), None)
    assert FR_VALID in decision.note and "not been confirmed by VIES" in decision.note and "282/2011" in decision.note


def test_domestic_at_19_percent_when_german_company_buys_from_german_seller():
    decision = decide("DE", is_business=True, tax_id="DE136695976")
    assert (decision.treatment, decision.rate, decision.mention) == (TaxTreatment.DOMESTIC, Decimal("19"), None)


def test_eu_consumer_at_french_rate_when_french_consumer():
    decision = decide("FR", is_business=False)
    assert (decision.treatment, decision.rate) == (TaxTreatment.EU_CONSUMER, Decimal("20"))
    assert decision.mention is None


def test_eu_consumer_at_25_5_percent_when_finnish_consumer():
    assert decide("FI", is_business=False).rate == Decimal("25.5")
    assert decide("FI", is_business=False, on=date(2024, 8, 31)).rate == Decimal("24")


def test_outside_scope_at_zero_when_us_company():
    decision = decide("US", is_business=True, tax_id="04-2103594")
    assert (decision.treatment, decision.rate, decision.mention) == (TaxTreatment.OUTSIDE_SCOPE, Decimal(0), None)


def test_eu_consumer_rate_when_french_number_has_bad_checksum():
    check = validate_tax_id("FR", FR_BAD_CHECKSUM)
    assert check.status is VatStatus.INVALID
    assert "checksum" in check.message
    decision = decide("FR", is_business=True, tax_id=FR_BAD_CHECKSUM)
    assert (decision.treatment, decision.rate) == (TaxTreatment.EU_CONSUMER, Decimal("20"))


def test_reverse_charge_when_vies_confirmed_status_valid():
    decision = tax_treatment(seller_country="DE", customer_country="AT", is_business=True, vat_status="valid", on=ON)
    assert decision.treatment is TaxTreatment.REVERSE_CHARGE


def test_eu_consumer_when_business_number_invalid_even_if_business():
    decision = tax_treatment(
        seller_country="DE", customer_country="NL", is_business=True, vat_status=VatStatus.INVALID, on=ON
    )
    assert (decision.treatment, decision.rate) == (TaxTreatment.EU_CONSUMER, Decimal("21"))


def test_invalid_with_clear_message_when_french_number_given_for_germany():
    check = validate_tax_id("DE", FR_VALID)
    assert check.status is VatStatus.INVALID
    assert "FR" in check.message and "DE" in check.message and "must start with DE" in check.message


def test_format_valid_with_prefix_added_when_number_given_without_prefix():
    check = validate_tax_id("FR", "403 032 650 45")
    assert (check.status, check.normalized, check.stripe_type) == (VatStatus.FORMAT_VALID, FR_VALID, "eu_vat")


@pytest.mark.parametrize("number", ["094259216", "EL094259216", "GR 094 259 216"])
def test_greek_number_normalized_to_el_prefix_when_entered_any_way(number):
    check = validate_tax_id("GR", number)
    assert (check.status, check.normalized) == (VatStatus.FORMAT_VALID, "EL094259216")


def test_none_status_when_no_tax_id_given():
    assert validate_tax_id("DE", "  ").status is VatStatus.NONE
    assert validate_tax_id("DE", None).status is VatStatus.NONE


def test_us_ein_format_valid_when_prefix_is_assigned():
    check = validate_tax_id("US", "042103594")
    assert (check.status, check.normalized, check.stripe_type) == (VatStatus.FORMAT_VALID, "04-2103594", "us_ein")


@pytest.mark.parametrize("number", ["00-0000000", "12-34567", "abc"])
def test_us_ein_invalid_when_unassigned_prefix_or_wrong_length(number):
    check = validate_tax_id("US", number)
    assert check.status is VatStatus.INVALID
    assert "US EIN" in check.message


@pytest.mark.parametrize(
    ("country", "number", "stripe_type"),
    [
        ("GB", "GB 980 7806 84", "gb_vat"),
        ("AU", "51 824 753 556", "au_abn"),
        ("CA", "123456782", "ca_bn"),
        ("CH", "CHE-100.155.212", "ch_uid"),
        ("NO", "995525828MVA", "no_vat"),
        ("IN", "27AAPFU0939F1ZV", "in_gst"),
    ],
)
def test_non_eu_tax_ids_format_valid_when_checksum_matches(country, number, stripe_type):
    check = validate_tax_id(country, number)
    assert (check.status, check.stripe_type) == (VatStatus.FORMAT_VALID, stripe_type)


@pytest.mark.parametrize(
    ("country", "number"),
    [
        ("GB", "GB980780685"),
        ("AU", "51 824 753 557"),
        ("CH", "CHE-100.155.213"),
        ("NO", "995525829MVA"),
    ],
)
def test_non_eu_tax_ids_invalid_when_checksum_wrong(country, number):
    assert validate_tax_id(country, number).status is VatStatus.INVALID


def test_northern_ireland_number_is_eu_vat_when_xi_prefix():
    check = validate_tax_id("GB", "XI980780684")
    assert (check.status, check.normalized, check.stripe_type) == (VatStatus.FORMAT_VALID, "XI980780684", "eu_vat")


def test_unchecked_country_keeps_number_with_status_none_when_no_validator():
    check = validate_tax_id("JP", "T1234567890123")
    assert check.status is VatStatus.NONE and check.normalized == "T1234567890123"


@pytest.mark.parametrize(
    ("country", "code"),
    [
        ("US", "94105"),
        ("US", "94105-1234"),
        ("US", "941051234"),
        ("CA", "k1a 0b1"),
        ("GB", "SW1A 1AA"),
        ("GB", "m1 1ae"),
        ("DE", "10115"),
        ("FR", "75001"),
        ("NL", "1012 AB"),
        ("NL", "1012ab"),
        ("JP", "100-0001"),
    ],
)
def test_postal_code_accepted_when_well_formed(country, code):
    assert validate_postal_code(country, code).valid


@pytest.mark.parametrize(
    ("country", "code"),
    [
        ("US", "9410"),
        ("US", "94105-12"),
        ("US", "ABCDE"),
        ("CA", "D1A 0B1"),
        ("GB", "12345"),
        ("DE", "1011"),
        ("FR", "7500A"),
        ("NL", "0123 AB"),
        ("US", "٩٤١٠٥"),  # Arabic-Indic digits: \d without re.ASCII took them
        ("DE", "１０１１５"),  # fullwidth digits
    ],
)
def test_postal_code_rejected_with_message_when_malformed(country, code):
    check = validate_postal_code(country, code)
    assert not check.valid
    assert country in check.message


def test_estonia_rate_is_22_before_and_24_from_2025_07_01():
    assert standard_rate("EE", date(2025, 6, 30)) == Decimal("22")
    assert standard_rate("EE", date(2025, 7, 1)) == Decimal("24")
    assert standard_rate("EE", date(2023, 12, 31)) == Decimal("20")


@pytest.mark.parametrize(
    ("country", "day", "rate"),
    [
        ("RO", date(2025, 7, 31), "19"),
        ("RO", date(2025, 8, 1), "21"),
        ("FI", date(2024, 9, 1), "25.5"),
        ("SK", date(2025, 1, 1), "23"),
        ("LU", date(2023, 6, 1), "16"),
        ("LU", date(2024, 1, 1), "17"),
        ("DE", date(2026, 1, 1), "19"),
        ("FR", date(2026, 1, 1), "20"),
        ("GR", date(2026, 1, 1), "24"),
        ("EL", date(2026, 1, 1), "24"),
    ],
)
def test_standard_rate_follows_effective_dates_when_rates_changed(country, day, rate):
    assert standard_rate(country, day) == Decimal(rate)


def test_rates_table_covers_all_27_member_states_when_loaded():
    assert len(EU_MEMBER_STATES) == 27
    assert {country for country, _, _ in STANDARD_RATES} == EU_MEMBER_STATES
    assert all(Decimal(15) <= rate <= Decimal(27) for _, rate, _ in STANDARD_RATES)


def test_standard_rate_raises_when_country_outside_eu_or_date_before_table():
    with pytest.raises(UnknownRate):
        standard_rate("US", ON)
    with pytest.raises(UnknownRate):
        standard_rate("DE", date(2020, 7, 1))


def test_is_eu_accepts_el_and_rejects_gb_when_checking_membership():
    assert is_eu("el") and is_eu("GR") and is_eu("de")
    assert not is_eu("GB") and not is_eu("CH")
