import pytest

from deployments.topics import topic_filters_overlap, validate_topic_filter, validate_topic_name


@pytest.mark.parametrize("value", ["a/b", "#", "+", "a/+/b", "a/#", "+/+/#", "/", "$SYS/#", "a//b", "ü/x"])
def test_filter_is_accepted_when_valid(value):
    validate_topic_filter(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a/#/b", "last level"),
        ("a+/b", "whole level"),
        ("#a", "whole level"),
        ("a/b#", "whole level"),
        ("", "empty"),
        ("a\x00b", "NUL"),
        ("a" * 65536, "65535"),
        ("\ud800", "UTF-8"),
    ],
)
def test_filter_is_rejected_with_reason_when_invalid(value, message):
    with pytest.raises(ValueError, match=message):
        validate_topic_filter(value)


def test_filter_length_counts_utf8_bytes_when_multibyte():
    validate_topic_filter("é" * 32767)
    with pytest.raises(ValueError, match="65535"):
        validate_topic_filter("é" * 32768)


@pytest.mark.parametrize("value", ["a/+", "#", "a/#", "a+"])
def test_name_is_rejected_when_it_has_wildcards(value):
    with pytest.raises(ValueError, match="wildcards"):
        validate_topic_name(value)


def test_name_is_accepted_when_plain():
    validate_topic_name("sensors/1/temp")


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("a/#", "a", True),
        ("a/+", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+/c", "a/b/#", True),
        ("a/b", "a/b/c", False),
        ("#", "x/y", True),
        ("secret/#", "public/#", False),
    ],
)
def test_overlap_is_computed_when_filters_compared(a, b, expected):
    assert topic_filters_overlap(a, b) is expected
    assert topic_filters_overlap(b, a) is expected
