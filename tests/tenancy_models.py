"""Which models belong to an organization or to the accounts, derived from the model graph, and a snapshot of their rows.

Used by the tenancy tests and the audit walks' allow-lists, so that a model added tomorrow is in the fingerprint the
moment it has a foreign-key path to Organization (or to User); nothing here lists models by hand but the two account
tables no foreign key leads to. Read-only: it never writes a row.
"""

from __future__ import annotations

import collections
import functools
from typing import Any

from django.apps import apps
from django.db import connection, models

# Account data that no foreign key ties to a user, named here because a chain of keys cannot find it.
UNKEYED_ACCOUNT_MODELS = {
    "accounts.SignInThrottle": "failed sign-ins, keyed by the email tried, whether or not an account has it",
    "sessions.Session": "the sessions people hold, keyed by their cookie",
}


def _forward_relations(model: type[models.Model]):
    for field in model._meta.get_fields():
        if field.concrete and (field.many_to_one or field.one_to_one) and field.related_model is not None:
            yield field.name, field.related_model


@functools.cache
def _paths_to(root: type[models.Model]) -> dict[type[models.Model], str]:
    """Every model (auto-created many-to-many tables included) with a chain of foreign keys to `root`, mapped to the
    shortest such chain as an ORM lookup; `root` itself maps to ``pk``. Breadth first over the reversed graph."""
    every = apps.get_models(include_auto_created=True)
    pointing_at: dict[type[models.Model], list[tuple[type[models.Model], str]]] = collections.defaultdict(list)
    for model in every:
        for name, target in _forward_relations(model):
            pointing_at[target].append((model, name))
    paths: dict[type[models.Model], str] = {root: "pk"}
    queue: collections.deque[type[models.Model]] = collections.deque([root])
    while queue:
        target = queue.popleft()
        for model, name in pointing_at[target]:
            if model in paths:
                continue
            tail = paths[target]
            paths[model] = name if tail == "pk" else f"{name}__{tail}"
            queue.append(model)
    return paths


def organization_paths() -> dict[type[models.Model], str]:
    """Every organization-owned model mapped to its shortest chain of foreign keys to Organization:
    ``deployment__project__organization``; Organization itself maps to ``pk``."""
    from organizations.models import Organization

    return _paths_to(Organization)


@functools.cache
def account_models() -> tuple[type[models.Model], ...]:
    """The models of people's accounts that no organization owns: every model with a chain of foreign keys to User
    and none to Organization (the user, its second factors, its groups), and UNKEYED_ACCOUNT_MODELS."""
    from accounts.models import User

    owned = organization_paths()
    keyed = [model for model in _paths_to(User) if model not in owned]
    return tuple(keyed + [apps.get_model(label) for label in UNKEYED_ACCOUNT_MODELS])


def _columns(model: type[models.Model], ignoring: frozenset[tuple[str, str]]) -> list[str]:
    return [
        field.attname for field in model._meta.concrete_fields if (model._meta.label, field.attname) not in ignoring
    ]


@functools.lru_cache(maxsize=32)
def _fingerprint_query(
    organization_pk: Any, accounts: bool = False, ignoring: frozenset[tuple[str, str]] = frozenset()
) -> tuple[str, tuple[Any, ...]]:
    """One statement over every organization-owned model (and, with `accounts`, every row of every account model):
    per model, its label, its row count, and the md5 of its rows as PostgreSQL prints them (every concrete column
    but those `ignoring` names as (label, column)), sorted, so no change to any other column of any row goes unseen.
    Rows are read through each model's base manager: a default manager that hides rows (deleted projects) would hide
    a change to them too."""
    querysets = [
        (model, model._base_manager.filter(**{path: organization_pk})) for model, path in organization_paths().items()
    ]
    if accounts:
        querysets += [(model, model._base_manager.all()) for model in account_models()]
    known = {(model._meta.label, field.attname) for model, _ in querysets for field in model._meta.concrete_fields}
    assert ignoring <= known, f"ignoring a column no fingerprinted model has: {sorted(ignoring - known)}"
    parts, params = [], []
    for model, queryset in sorted(querysets, key=lambda item: item[0]._meta.label):
        sql, model_params = queryset.values_list(*_columns(model, ignoring)).query.sql_with_params()
        parts.append(
            f"SELECT %s AS label, count(*) AS rows, md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
            f"AS digest FROM ({sql}) AS t"
        )
        params += [model._meta.label, *model_params]
    return " UNION ALL ".join(parts), tuple(params)


def fingerprint(
    organization, *, accounts: bool = False, ignoring: frozenset[tuple[str, str]] = frozenset()
) -> dict[str, tuple[int, str]]:
    """Everything of `organization` a request could change, in every organization-owned model, as comparable data:
    per model, how many rows it owns and a digest of their every column. With `accounts`, also every row of every
    account model (account_models: a sign-up or a password reset belongs to no organization). `ignoring` leaves out
    columns as (model label, column): each caller says why. One query, so it can run around every request of the
    tenancy tests and the audit walks' allow-lists (per model and in Python it was most of their time)."""
    sql, params = _fingerprint_query(organization.pk, accounts, ignoring)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {label: (rows, digest) for label, rows, digest in cursor.fetchall()}


def changed(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> dict[str, str]:
    """The models whose rows differ between two fingerprints, each with its row counts: for a failure's message."""
    found = {}
    for label in sorted(set(before) | set(after)):
        was, now = before.get(label, (0, "")), after.get(label, (0, ""))
        if was != now:
            found[label] = f"{was[0]} -> {now[0]} rows" if was[0] != now[0] else f"{now[0]} rows, contents changed"
    return found


def public_ids(organization) -> set[str]:
    """The public identifiers (``dep_…``, ``key_…``) of every row `organization` owns: none may appear in an answer
    to a member of another organization."""
    found: set[str] = set()
    for model, path in organization_paths().items():
        if any(field.attname == "public_id" for field in model._meta.concrete_fields):
            found.update(model._base_manager.filter(**{path: organization.pk}).values_list("public_id", flat=True))
    return {value for value in found if value}
