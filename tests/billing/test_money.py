from decimal import Decimal

import pytest

from billing.money import (
    Money,
    annual_price,
    format_money,
    minor_units,
    percentage_of,
    prorate,
    round_half_up,
    to_decimal,
    usage_line_amount,
)


@pytest.mark.parametrize(("currency", "expected"), [("JPY", 0), ("USD", 2), ("eur", 2), ("KWD", 3), ("CLF", 4)])
def test_minor_units_follow_iso_4217_when_currency_is_known(currency, expected):
    assert minor_units(currency) == expected


def test_minor_units_rejects_code_when_not_three_letters():
    with pytest.raises(ValueError):
        minor_units("EURO")


def test_round_half_up_rounds_ties_away_from_zero_when_exactly_half():
    assert round_half_up(Decimal("0.005"), "USD") == 1
    assert round_half_up(Decimal("0.0049999"), "USD") == 0
    assert round_half_up(Decimal("-0.005"), "USD") == -1
    assert round_half_up(Decimal("2.5"), "JPY") == 3
    assert round_half_up(Decimal("1.2345"), "KWD") == 1235


def test_round_half_up_refuses_float_when_given_one():
    with pytest.raises(TypeError):
        round_half_up(0.005, "USD")


def test_annual_price_is_268056_cents_when_1k_tier_costs_036_per_hour():
    assert annual_price(hourly_price=Decimal("0.36"), currency="USD") == 268056
    assert format_money(268056, "USD") == "2,680.56 USD"


def test_annual_price_uses_given_discount_when_not_default():
    assert annual_price(hourly_price=Decimal("1"), currency="EUR", discount=Decimal(0)) == 876000


def test_usage_line_bills_by_the_second_when_partial_hour():
    # 90 seconds at 0.36/h = 0.009 -> 0.01 (half-up once per line)
    assert usage_line_amount(seconds=90, hourly_price=Decimal("0.36"), currency="USD") == 1
    # a full 30-day month of the 10k tier: 720 h × 1.49 = 1072.80
    assert usage_line_amount(seconds=720 * 3600, hourly_price=Decimal("1.49"), currency="USD") == 107280


def test_usage_line_rounds_once_when_summed_over_a_month():
    # per-hour rounding would give 720 × round(0.06 × 3599/3600) = 720 × 6 cents; one rounding differs
    seconds = 720 * 3599
    assert usage_line_amount(seconds=seconds, hourly_price=Decimal("0.06"), currency="USD") == 4319


def test_prorate_rounds_half_up_when_fraction_of_amount():
    assert prorate(amount_minor=268056, part=1, whole=2) == 134028
    assert prorate(amount_minor=1, part=1, whole=2) == 1
    assert prorate(amount_minor=100, part=1, whole=3) == 33


def test_prorate_rejects_part_when_larger_than_whole():
    with pytest.raises(ValueError):
        prorate(amount_minor=100, part=4, whole=3)


def test_percentage_of_rounds_half_up_when_vat_on_net():
    assert percentage_of(amount_minor=1000, rate_percent=Decimal("25.5")) == 255
    assert percentage_of(amount_minor=1, rate_percent=Decimal("50")) == 1


def test_format_money_prints_currency_decimals_when_not_two():
    assert format_money(1000000, "JPY") == "1,000,000 JPY"
    assert format_money(-1500, "KWD") == "-1.500 KWD"
    assert to_decimal(5, "USD") == Decimal("0.05")


def test_money_refuses_mixing_currencies_when_adding():
    assert Money(150, "usd") + Money(50, "USD") == Money(200, "USD")
    with pytest.raises(ValueError):
        Money(1, "USD") + Money(1, "EUR")
