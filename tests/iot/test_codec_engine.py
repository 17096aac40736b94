"""The agent's codec hot path, piece by piece: paho sped up without changing what it packs or reads, decoded data
written as JSON (orjson, with the standard library behind it), and the per-topic routes of the rules."""

import json
import math
import subprocess
import sys
import textwrap

import pytest

from iot import codec_topics, schemas
from iot.agent import codecs as agent_codecs

PAHO_CHECK = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from paho.mqtt import _packet
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    def sample():
        out = {}
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = ("a", "1")
        props.UserProperty = ("b", "2")
        props.MessageExpiryInterval = 30
        props.ContentType = "application/json"
        packed = props.pack()
        out["packed"] = packed.hex()
        back = Properties(PacketTypes.PUBLISH)
        back.unpack(packed)
        out["unpacked"] = back.json()
        back.unpack(b"\\x00")  # unpack clears what was there
        out["cleared"] = [str(back), back.isEmpty()]
        topic = b"codec/dev/in"
        packet = len(topic).to_bytes(2, "big") + topic + (7).to_bytes(2, "big") + packed + b"payload"
        message = _packet.decode_publish(0x32, packet, 5)
        out["publish"] = [message.topic.decode(), message.mid, message.payload.decode(), message.properties.json()]
        out["codes"] = [
            [str(ReasonCode(PacketTypes.PUBACK, identifier=i)), ReasonCode(PacketTypes.PUBACK, identifier=i).is_failure]
            for i in (0, 16, 128, 135, 151)
        ]
        out["named"] = ReasonCode(PacketTypes.DISCONNECT).value
        try:
            props.TopicAlias = 0
        except Exception as exc:
            out["refused"] = str(exc)
        try:
            Properties(PacketTypes.PUBLISH).SessionExpiryInterval = 5
        except Exception as exc:
            out["wrong packet"] = str(exc)
        return out

    stock = sample()
    import django
    django.setup()
    from iot.agent.codecs import speed_up_paho
    speed_up_paho()
    speed_up_paho()  # idempotent
    fast = sample()
    print(json.dumps([stock, fast]))
    """
)


def test_paho_packs_and_reads_as_stock_paho_when_sped_up():
    from django.conf import settings

    done = subprocess.run(
        [sys.executable, "-c", PAHO_CHECK, str(settings.BASE_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    stock, fast = json.loads(done.stdout)
    assert stock["unpacked"]["UserProperty"] == [["a", "1"], ["b", "2"]]  # the sample does exercise properties
    assert fast == stock


def test_decoded_data_is_written_as_compact_json_when_orjson_and_the_standard_library_agree():
    value = {"device": "dév-1", "values": [1, 2.5, True, None], "nested": {"k": 'quote " and \\ and \n'}}
    assert schemas.json_bytes(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def test_decoded_data_is_still_written_when_an_integer_exceeds_64_bits():
    assert json.loads(schemas.json_bytes({"big": 2**70})) == {"big": 2**70}


def test_nan_is_written_as_null_when_json_cannot_express_it():
    assert json.loads(schemas.json_bytes({"t": math.nan, "u": math.inf})) == {"t": None, "u": None}


def test_decode_fails_clearly_when_the_value_holds_text_that_is_not_unicode():
    with pytest.raises(schemas.CodecFailed, match="cannot be written as JSON"):
        schemas.json_bytes({"t": "\ud800"})


class _Rule:
    def __init__(self, topic_filter: str, template: str) -> None:
        self.topic_filter = topic_filter
        self.template = codec_topics.parse_template(template, topic_filter=topic_filter)


def test_routes_keep_the_rules_order_and_render_each_target_when_several_rules_match():
    first, second, other = _Rule("a/+/in", "out/{topic[1]}"), _Rule("a/#", "all/{topic}"), _Rule("b/+", "x")
    route = agent_codecs._route([first, second, other], "a/dev/in")  # type: ignore[list-item]
    assert route == ((first, "out/dev"), (second, "all/a/dev/in"))
    assert agent_codecs._route([other], "a/dev/in") == ()  # type: ignore[list-item]


def test_route_marks_the_target_unusable_when_the_rendered_topic_exceeds_65535_bytes():
    rule = _Rule("a/+", "{topic}/{topic}")
    long_level = "é" * 20_000  # 40,000 bytes in UTF-8: the output topic doubles it
    ((matched, target),) = agent_codecs._route([rule], f"a/{long_level}")  # type: ignore[list-item]
    assert matched is rule and target is None


@pytest.mark.parametrize(
    "topic, reason",
    [
        ("devices/d-1//raw", "empty"),
        ("devices/d-1/$SYS/raw", "start with $"),
        ("devices/d-1/codec-errors/raw", "codec-errors"),
    ],
    ids=["empty-level", "dollar-level", "error-topic-level"],
)
def test_message_whose_levels_would_render_a_forbidden_output_topic_is_reported_not_published_when_handled(
    topic, reason
):
    # A device controls the levels under devices/{its id}/: a template made of them must not let it publish (as the
    # agent, a superuser) to "", to $… or to codec-errors/…, and one such message must not stop the rules.
    from paho.mqtt import client as mqtt

    class Host:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    published = []
    real_publish = Host.client.publish

    def publish(topic, payload=None, qos=0, **kwargs):
        real_publish(topic, payload, qos)  # paho's own checks (not connected: nothing is sent)
        published.append((topic, payload))

    Host.client.publish = publish  # type: ignore[method-assign]
    engine = agent_codecs.CodecEngine(Host())  # type: ignore[arg-type]
    rule = _Rule("devices/+/+/raw", "{topic[2]}")
    rule.pk, rule.public_id, rule.direction = 1, "cdr_test", "decode"  # type: ignore[attr-defined]
    rule.error_topic = codec_topics.error_topic("cdr_test")  # type: ignore[attr-defined]
    rule.codec = schemas.Codec(schemas.compile_source("json_schema", '{"type": "object"}'))  # type: ignore[attr-defined]
    engine.rules = [rule]  # type: ignore[list-item]
    message = mqtt.MQTTMessage(mid=1, topic=topic.encode())
    message.payload, message.qos = b'{"t": 1}', 1
    engine.handle(message)
    ((where, body),) = published
    assert where == "codec-errors/cdr_test"
    assert reason in json.loads(body)["reason"]
    # A level the template may use stays usable.
    ok = mqtt.MQTTMessage(mid=2, topic=b"devices/d-1/plant/raw")
    ok.payload, ok.qos = b'{"t": 1}', 1
    engine.handle(ok)
    assert published[-1] == ("plant", b'{"t":1}')
