"""The ordered ACL list compiled to EMQX's per-subject lists: same decision for every client, or a refusal that
names the rules. The property test draws rule sets from a seeded generator and compares both evaluations."""

import itertools
import random

import pytest

from deployments.drivers.base import AclEntry
from deployments.emqx_acl import AclNotExpressible, compile_acl, decide_emqx, decide_ordered, topic_matches

RULE_TOPICS = ["a", "a/b", "a/+", "a/#", "#", "+/b", "$SYS/x", "b", "dev/${clientid}/#"]
REQUEST_TOPICS = ["a", "a/b", "a/c", "b", "$SYS/x", "a/+", "x/b", "dev/c1/t"]
SUBJECTS = ["everyone", "u1", "u2", "c1", "c2"]


def _rule(permission, action, topic, who="everyone") -> AclEntry:
    return AclEntry(
        permission=permission,
        action=action,
        topic=topic,
        username=who if who.startswith("u") else None,
        client_id=who if who.startswith("c") else None,
    )


def _random_rules(rng: random.Random) -> list[AclEntry]:
    return [
        _rule(
            rng.choice(["allow", "deny"]),
            rng.choice(["publish", "subscribe", "all"]),
            rng.choice(RULE_TOPICS),
            rng.choice(SUBJECTS),
        )
        for _ in range(rng.randint(0, 8))
    ]


def test_compiled_lists_decide_as_the_ordered_list_for_every_client_when_compile_accepts():
    rng = random.Random(20260)
    accepted = refused = interleaved = 0
    for _ in range(2500):
        rules = _random_rules(rng)
        try:
            compiled = compile_acl(rules)
        except AclNotExpressible:
            refused += 1
            continue
        accepted += 1
        kinds = ["c" if r.client_id else "u" if r.username else "a" for r in rules]
        interleaved += "u" in kinds and "c" in kinds and kinds.index("u") < len(kinds) - 1 - kinds[::-1].index("c")
        for client_id, username, action, topic in itertools.product(
            ["c1", "c2", "c3"], ["u1", "u2", "u3"], ["publish", "subscribe"], REQUEST_TOPICS
        ):
            ours = decide_ordered(rules, client_id=client_id, username=username, action=action, topic=topic)
            emqx = decide_emqx(compiled, client_id=client_id, username=username, action=action, topic=topic)
            assert ours == emqx, (rules, client_id, username, action, topic)
    # The generator exercises both outcomes, including accepted lists where a username rule precedes a client rule.
    assert accepted > 1000 and refused > 100 and interleaved > 50


def test_every_refusal_is_a_real_difference_or_an_overlap_when_reordering_would_be_needed():
    # A refused pair must be able to decide one request differently in the two orders.
    rules = [_rule("deny", "publish", "a/#", "u1"), _rule("allow", "publish", "a/b", "c1")]
    with pytest.raises(AclNotExpressible) as refused:
        compile_acl(rules)
    assert refused.value.positions == (0, 1)
    assert "rule 1 (deny publish 'a/#' for username 'u1')" in str(refused.value)
    assert "rule 2 (allow publish 'a/b' for client id 'c1')" in str(refused.value)
    assert decide_ordered(rules, client_id="c1", username="u1", action="publish", topic="a/b") == "deny"


def test_username_rule_before_client_rule_is_accepted_when_they_cannot_meet():
    rules = [_rule("deny", "publish", "a/#", "u1"), _rule("allow", "subscribe", "a/b", "c1")]
    compiled = compile_acl(rules)
    assert [r.topic for r in compiled.by_client_id["c1"]] == ["a/b"]


def test_rules_for_everyone_before_a_subject_rule_are_copied_into_its_list_when_compiled():
    rules = [_rule("deny", "all", "#"), _rule("allow", "all", "a", "u1"), _rule("allow", "all", "b")]
    compiled = compile_acl(rules)
    assert [(r.permission, r.topic) for r in compiled.by_username["u1"]] == [("deny", "#"), ("allow", "a")]
    assert [r.topic for r in compiled.for_all] == ["#", "b"]
    assert decide_emqx(compiled, client_id="x", username="u1", action="publish", topic="a") == "deny"


def test_placeholder_topics_are_taken_to_overlap_when_checking_order():
    rules = [_rule("deny", "publish", "dev/${username}/#", "u1"), _rule("allow", "publish", "dev/x/y", "c1")]
    with pytest.raises(AclNotExpressible):
        compile_acl(rules)


def test_more_than_100_rules_for_one_subject_are_refused_naming_the_subject():
    rules = [_rule("allow", "publish", f"t/{i}", "u1") for i in range(101)]
    with pytest.raises(AclNotExpressible, match="username 'u1' make 101 EMQX rules") as refused:
        compile_acl(rules)
    assert refused.value.field == "username" and refused.value.positions == (100,)
    compile_acl(rules[:100])


def test_rules_for_everyone_count_toward_a_subject_limit_when_placed_before_its_last_rule():
    rules = [_rule("allow", "publish", f"t/{i}") for i in range(60)]
    rules += [_rule("allow", "publish", f"u/{i}", "c1") for i in range(41)]
    with pytest.raises(AclNotExpressible, match="client id 'c1' make 101 EMQX rules, counting the rules for everyone"):
        compile_acl(rules)


def test_rule_naming_user_and_client_is_refused_on_the_client_id_field():
    with pytest.raises(AclNotExpressible) as refused:
        compile_acl([AclEntry(permission="allow", action="all", topic="a", username="u", client_id="c")])
    assert refused.value.field == "client_id"


@pytest.mark.parametrize(
    ("topic", "rule", "expected"),
    [
        ("a/b", "a/#", True),
        ("a", "a/#", True),
        ("a/b", "a/+", True),
        ("a/b/c", "a/+", False),
        ("$SYS/x", "#", False),
        ("$SYS/x", "+/x", False),
        ("$SYS/x", "$SYS/#", True),
        ("a/+", "a/b", False),
    ],
)
def test_topic_matches_follows_mqtt_wildcards_and_dollar_topics(topic, rule, expected):
    assert topic_matches(topic, rule) is expected
