"""Our ordered ACL list compiled into the per-subject lists EMQX's built-in authorization database evaluates.

We promise one ordered list where the first matching rule decides. EMQX evaluates, for a client, its client id's
rules, then its username's rules, then the rules for all, the first match deciding (emqx/emqx v5.8.6
apps/emqx_auth_mnesia/src/emqx_authz_mnesia.erl authorize/4). compile_acl gives EMQX lists that decide as our list
does for every client, or refuses, naming the rules, an order EMQX cannot express. Pure: no broker, no database.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from deployments.drivers.base import AclEntry
from deployments.emqx_config import MAX_ACL_RULES_PER_SUBJECT
from deployments.topics import EMQX_EXACT_PREFIX, EMQX_PLACEHOLDER, emqx_reads_specially, topic_filters_overlap


class AclNotExpressible(ValueError):
    """The ordered list has no EMQX equivalent. `positions` are the 0-based positions of the rules at fault."""

    def __init__(self, message: str, *, positions: tuple[int, ...], field: str = "position") -> None:
        super().__init__(message)
        self.positions = positions
        self.field = field


@dataclasses.dataclass(frozen=True)
class CompiledAcl:
    by_client_id: dict[str, list[AclEntry]]
    by_username: dict[str, list[AclEntry]]
    for_all: list[AclEntry]


def _describe(position: int, entry: AclEntry) -> str:
    who = (
        f"client id {entry.client_id!r}"
        if entry.client_id is not None
        else f"username {entry.username!r}"
        if entry.username is not None
        else "everyone"
    )
    return f"rule {position + 1} ({entry.permission} {entry.action} {entry.topic!r} for {who})"


def _topics_may_overlap(a: str, b: str) -> bool:
    # EMQX expands ${clientid}/${username} placeholders and reads an `eq ` prefix as an exact filter
    # (emqx_authz_rule compile_topic); either makes the rule's topics depend on the client, so assume they meet.
    if "${" in a or "${" in b or a.startswith("eq ") or b.startswith("eq "):
        return True
    return topic_filters_overlap(a, b)


def as_written(entries: Sequence[AclEntry]) -> tuple[list[AclEntry], tuple[str, ...]]:
    """The entries with each topic as EMQX must be given it to read it as written, as mosquitto does, and a note for
    each rule that could only be approximated.

    The API refuses such topics (deployments.topics.validate_acl_topic); rules stored before it did still deploy. EMQX
    reads an `eq ` topic word for word with no placeholder (emqx_authz_rule compile_topic/1), which is the literal
    topic exactly when it has no wildcard. With a wildcard no form keeps both (v5.8.6's `${$}` escape does not help:
    a topic with no real placeholder is matched as typed, escape included), so the rule is approximated on the strict
    side: an allow is left out; a deny gets `+` at each level EMQX would have read otherwise, which denies what the
    literal topic denies (but a first level starting with `$`, which no wildcard matches: a topic no client means)
    and what EMQX denied when it filled the placeholder in. A deny is widened even without a wildcard for that second
    reason."""
    rendered: list[AclEntry] = []
    notes: list[str] = []
    for position, entry in enumerate(entries):
        topic = entry.topic
        if not emqx_reads_specially(topic):
            rendered.append(entry)
            continue
        has_wildcard = "+" in topic or "#" in topic
        if entry.permission == "allow" and not has_wildcard:
            rendered.append(dataclasses.replace(entry, topic=EMQX_EXACT_PREFIX + topic))
        elif entry.permission == "allow":
            notes.append(f"{_describe(position, entry)} left out: EMQX has no literal form of it with its wildcards")
        else:
            widened = "/".join(
                "+" if EMQX_PLACEHOLDER in level or (index == 0 and topic.startswith(EMQX_EXACT_PREFIX)) else level
                for index, level in enumerate(topic.split("/"))
            )
            rendered.append(dataclasses.replace(entry, topic=widened))
            notes.append(f"{_describe(position, entry)} widened to {widened!r}")
    return rendered, tuple(notes)


def may_conflict(a: AclEntry, b: AclEntry) -> bool:
    """Some request could match both rules and they would decide differently."""
    if a.permission == b.permission:
        return False
    if a.action != "all" and b.action != "all" and a.action != b.action:
        return False
    return _topics_may_overlap(a.topic, b.topic)


def compile_acl(entries: Sequence[AclEntry]) -> CompiledAcl:
    """EMQX's lists for the ordered `entries`, or AclNotExpressible.

    For a subject (a client id or a username) its list is its own rules with, in order, the rules for everyone
    that come before its last rule; the list for all holds every rule for everyone. A client's EMQX sequence is
    then its client-id list, its username's list, the list for all: the same first match as our order, except
    where a username rule comes before a rule of a client-id list and could decide the same request otherwise.
    Such an order is refused.
    """
    indexed = list(enumerate(entries))
    for position, entry in indexed:
        if entry.username is not None and entry.client_id is not None:
            raise AclNotExpressible(
                f"{_describe(position, entry)} names both a username and a client id; EMQX matches one or the "
                "other: split it into two rules",
                positions=(position,),
                field="client_id",
            )

    def subject_list(key: str) -> dict[str, list[tuple[int, AclEntry]]]:
        last: dict[str, int] = {}
        for position, entry in indexed:
            who = getattr(entry, key)
            if who is not None:
                last[who] = position
        lists: dict[str, list[tuple[int, AclEntry]]] = {}
        for who, end in last.items():
            lists[who] = [
                (position, entry)
                for position, entry in indexed
                if position <= end
                and (getattr(entry, key) == who or (entry.username is None and entry.client_id is None))
            ]
        return lists

    client_lists = subject_list("client_id")
    user_lists = subject_list("username")
    username_rules = [(p, e) for p, e in indexed if e.username is not None]
    for who, rules in client_lists.items():
        for position, rule in rules:
            for user_position, user_rule in username_rules:
                if user_position < position and may_conflict(user_rule, rule):
                    raise AclNotExpressible(
                        f"{_describe(user_position, user_rule)} comes before {_describe(position, rule)}, and a "
                        f"client {who!r} logged in as {user_rule.username!r} could match both: EMQX checks a "
                        "client id's rules before a username's, so the later rule would decide. Move "
                        f"rule {position + 1} above rule {user_position + 1}, or make them not overlap.",
                        positions=(user_position, position),
                    )
    for_all = [(p, e) for p, e in indexed if e.username is None and e.client_id is None]
    for label, field, lists in (
        ("client id", "client_id", client_lists),
        ("username", "username", user_lists),
        ("everyone", "position", {None: for_all}),
    ):
        for who, rules in lists.items():
            if len(rules) > MAX_ACL_RULES_PER_SUBJECT:
                subject = f"{label} {who!r}" if who is not None else label
                extra = "" if who is None else ", counting the rules for everyone placed before its last rule"
                raise AclNotExpressible(
                    f"the rules for {subject} make {len(rules)} EMQX rules{extra}; EMQX holds at most "
                    f"{MAX_ACL_RULES_PER_SUBJECT} per subject",
                    positions=tuple(p for p, _ in rules[MAX_ACL_RULES_PER_SUBJECT:]),
                    field=field,
                )
    return CompiledAcl(
        by_client_id={who: [e for _, e in rules] for who, rules in client_lists.items()},
        by_username={who: [e for _, e in rules] for who, rules in user_lists.items()},
        for_all=[e for _, e in for_all],
    )


# -- evaluation, as each side does it (used by the tests that compare them) ----------------------------------


def topic_matches(topic: str, topic_filter: str) -> bool:
    """MQTT matching of a topic (or a subscription's filter, word by word) against a rule's filter; wildcards at
    the first level do not match `$` topics (emqx/emqx apps/emqx/src/emqx_topic.erl match/2)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    words, filters = topic.split("/"), topic_filter.split("/")
    for index, pattern in enumerate(filters):
        if pattern == "#":
            return True
        if index >= len(words):
            return False
        if pattern != "+" and pattern != words[index]:
            return False
    return len(words) == len(filters)


def _first_match(rules: Sequence[AclEntry], action: str, topic: str) -> str | None:
    for rule in rules:
        if (rule.action == "all" or rule.action == action) and topic_matches(topic, rule.topic):
            return rule.permission
    return None


def decide_ordered(entries: Sequence[AclEntry], *, client_id: str, username: str, action: str, topic: str):
    """Our promise: the first rule for this client (its client id, its username, or everyone) that matches."""
    applicable = [
        e
        for e in entries
        if (e.client_id is None or e.client_id == client_id) and (e.username is None or e.username == username)
    ]
    return _first_match(applicable, action, topic)


def decide_emqx(compiled: CompiledAcl, *, client_id: str, username: str, action: str, topic: str):
    """EMQX's: client-id rules, then username rules, then rules for all (emqx_authz_mnesia:authorize/4)."""
    sequence = compiled.by_client_id.get(client_id, []) + compiled.by_username.get(username, []) + compiled.for_all
    return _first_match(sequence, action, topic)
