"""The shadow document semantics (AWS IoT's classic shadow) on their own: merge, nulls, delta, versions, limits."""

import json

import pytest

from iot import shadow
from iot.shadow import Document, ShadowRejected, apply_update, delta, get_body, parse_update

T = 1_793_613_600


def update(document, body, timestamp=T):
    return apply_update(document, parse_update(body), timestamp=timestamp)


def test_first_reported_update_creates_version_1_with_accepted_and_documents_when_shadow_is_new():
    result = update(Document(), {"state": {"reported": {"temp": 20.5}}, "clientToken": "t-1"})
    assert result.document.present and result.document.version == 1
    assert result.accepted == {
        "state": {"reported": {"temp": 20.5}},
        "metadata": {"reported": {"temp": {"timestamp": T}}},
        "version": 1,
        "timestamp": T,
        "clientToken": "t-1",
    }
    assert result.documents["previous"] is None
    assert result.documents["current"] == {
        "state": {"reported": {"temp": 20.5}},
        "metadata": {"reported": {"temp": {"timestamp": T}}},
        "version": 1,
    }
    assert result.delta is None  # nothing desired


def test_objects_merge_and_null_removes_a_field_when_updated_twice():
    first = update(Document(), {"state": {"reported": {"a": 1, "nested": {"x": 1, "y": 2}}}}).document
    second = update(first, {"state": {"reported": {"a": None, "nested": {"y": 3, "z": [1, 2]}}}}, T + 5).document
    assert second.reported == {"nested": {"x": 1, "y": 3, "z": [1, 2]}}
    assert second.reported_metadata == {
        "nested": {"x": {"timestamp": T}, "y": {"timestamp": T + 5}, "z": {"timestamp": T + 5}}
    }
    assert second.version == 2


def test_metadata_of_a_field_named_timestamp_is_kept_when_its_object_is_merged():
    # "timestamp" is an ordinary field name (a GPS fix, a reading): an object holding one is still an object.
    first = update(Document(), {"state": {"reported": {"gps": {"lat": 1, "timestamp": 100}}}}).document
    second = update(first, {"state": {"reported": {"gps": {"lat": 2}}}}, T + 5).document
    assert second.reported == {"gps": {"lat": 2, "timestamp": 100}}
    assert second.reported_metadata == {"gps": {"lat": {"timestamp": T + 5}, "timestamp": {"timestamp": T}}}
    desired = update(second, {"state": {"desired": {"gps": {"lat": 3, "timestamp": 100}}}}, T + 9)
    assert desired.delta["state"] == {"gps": {"lat": 3}}
    assert desired.delta["metadata"] == {"gps": {"lat": {"timestamp": T + 9}}}


def test_null_section_clears_it_when_desired_is_null():
    document = update(Document(), {"state": {"desired": {"a": 1}, "reported": {"b": 2}}}).document
    cleared = update(document, {"state": {"desired": None}}).document
    assert cleared.desired == {} and cleared.desired_metadata == {}
    assert cleared.reported == {"b": 2}


def test_delta_holds_what_desired_has_that_reported_does_not_when_desired_changes():
    document = update(Document(), {"state": {"reported": {"mode": "eco", "fan": {"speed": 2, "on": True}}}}).document
    result = update(document, {"state": {"desired": {"mode": "eco", "fan": {"speed": 3, "on": True}, "led": 1}}})
    assert result.delta["state"] == {"fan": {"speed": 3}, "led": 1}
    assert result.delta["version"] == 2
    assert result.delta["metadata"] == {"fan": {"speed": {"timestamp": T}}, "led": {"timestamp": T}}


def test_delta_is_empty_when_reported_catches_up_and_true_is_not_one():
    assert delta({"a": 1, "b": [1, 2]}, {"a": 1.0, "b": [1, 2]}) == {}
    assert delta({"on": True}, {"on": 1}) == {"on": True}
    assert delta({"x": {"y": None}}, {}) == {"x": {"y": None}}


def test_no_delta_message_when_update_sets_only_reported_even_if_desired_differs():
    document = update(Document(), {"state": {"desired": {"a": 2}}}).document
    assert update(document, {"state": {"reported": {"b": 1}}}).delta is None


def test_get_answers_the_whole_document_with_delta_when_present():
    document = update(Document(), {"state": {"desired": {"a": 2}, "reported": {"a": 1}}}).document
    body = get_body(document, timestamp=T + 1, client_token="g")
    assert body["state"] == {"desired": {"a": 2}, "reported": {"a": 1}, "delta": {"a": 2}}
    assert body["version"] == 1 and body["timestamp"] == T + 1 and body["clientToken"] == "g"


def test_get_is_rejected_with_404_when_no_shadow_exists():
    with pytest.raises(ShadowRejected) as raised:
        get_body(Document(), timestamp=T)
    assert raised.value.code == 404


def test_stale_version_is_rejected_with_409_and_changes_nothing_when_versions_differ():
    document = update(Document(), {"state": {"reported": {"a": 1}}}).document
    before = document.copy()
    with pytest.raises(ShadowRejected) as raised:
        update(document, {"state": {"reported": {"a": 2}}, "version": 0})
    assert raised.value.code == 409
    assert document == before
    assert update(document, {"state": {"reported": {"a": 2}}, "version": 1}).document.version == 2


def test_delete_keeps_counting_versions_when_shadow_is_deleted():
    document = update(Document(), {"state": {"reported": {"a": 1}}}).document
    deleted = shadow.delete_document(document)
    assert not deleted.present and deleted.version == 2
    assert update(deleted, {"state": {"reported": {"b": 1}}}).document.version == 3


@pytest.mark.parametrize(
    "body, code, words",
    [
        ([1, 2], 400, "JSON object"),
        ("text", 400, "JSON object"),
        ({}, 400, "state"),
        ({"state": []}, 400, "JSON object"),
        ({"state": {}}, 400, "desired or reported"),
        ({"state": {"delta": {"a": 1}}}, 400, "only desired and reported"),
        ({"state": {"desired": 5}}, 400, "object or null"),
        ({"state": {"desired": {"a": 1}}, "version": "3"}, 400, "version"),
        ({"state": {"desired": {"a": 1}}, "version": True}, 400, "version"),
        ({"state": {"desired": {"a": 1}}, "version": -1}, 400, "version"),
        ({"state": {"desired": {"a": 1}}, "extra": 1}, 400, "Unknown field"),
        ({"state": {"desired": {"a": "nul\x00"}}}, 400, "NUL"),
        ({"state": {"desired": {"k\x00": 1}}}, 400, "NUL"),
        ({"state": {"desired": {"a": "\ud800"}}}, 400, "surrogate"),
        ({"state": {"desired": {"a": 1}}, "clientToken": "x" * 65}, 400, "clientToken"),
    ],
)
def test_bad_request_is_rejected_with_its_code_when_not_a_valid_update(body, code, words):
    with pytest.raises(ShadowRejected) as raised:
        parse_update(body)
    assert raised.value.code == code
    assert words in raised.value.message


def test_six_levels_pass_and_seven_are_rejected_when_nesting_deepens():
    six = {"1": {"2": {"3": {"4": {"5": {"6": "leaf"}}}}}}
    parse_update({"state": {"reported": six}})
    parse_update({"state": {"reported": {"1": {"2": {"3": {"4": {"5": [1, 2]}}}}}}})
    for seven in ({"1": {"2": {"3": {"4": {"5": {"6": {"7": 1}}}}}}}, {"1": {"2": {"3": {"4": {"5": {"6": [1]}}}}}}):
        with pytest.raises(ShadowRejected) as raised:
            parse_update({"state": {"reported": seven}})
        assert raised.value.code == 400 and "6" in raised.value.message


def test_request_over_8_kb_is_rejected_with_413_when_too_large():
    with pytest.raises(ShadowRejected) as raised:
        parse_update({"state": {"reported": {"blob": "x" * 8200}}})
    assert raised.value.code == 413


def test_document_growing_over_8_kb_is_rejected_with_413_and_unchanged_when_merged():
    document = Document()
    for key in ("a", "b"):
        document = update(document, {"state": {"reported": {key: "x" * 3000}}}).document
    before = document.copy()
    # The request is under 8 KiB, but the merged document would pass it.
    with pytest.raises(ShadowRejected) as raised:
        update(document, {"state": {"reported": {"c": "y" * 3000}}})
    assert raised.value.code == 413
    assert document == before and document.version == 2


def test_payload_that_is_not_json_is_rejected_with_400_when_decoded():
    for payload in (b"{not json", b"\xff\xfe", b"NaN", b'{"state": {"reported": {"a": Infinity}}}'):
        with pytest.raises(ShadowRejected) as raised:
            shadow.decode_json(payload)
        assert raised.value.code == 400


def test_client_token_is_recovered_from_a_bad_request_when_present():
    assert shadow.client_token_of(json.dumps({"clientToken": "abc", "state": 5}).encode()) == "abc"
    assert shadow.client_token_of(b"garbage") == ""
