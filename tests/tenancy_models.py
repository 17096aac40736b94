"""Which models belong to an organization, derived from the model graph, and a snapshot of one organization's rows.

Used by the tenancy tests, so that a model added tomorrow is in the fingerprint the moment it has a foreign-key path
to Organization; nothing here lists models by hand. Read-only: it never writes a row.
"""

from __future__ import annotations

import collections
import functools
from typing import Any

from django.apps import apps
from django.db import connection, models


def _forward_relations(model: type[models.Model]):
    for field in model._meta.get_fields():
        if field.concrete and (field.many_to_one or field.one_to_one) and field.related_model is not None:
            yield field.name, field.related_model


@functools.cache
def organization_paths() -> dict[type[models.Model], str]:
    """Every model (auto-created many-to-many tables included) with a chain of foreign keys to Organization, mapped to
    the shortest such chain as an ORM lookup: ``deployment__project__organization``; Organization itself maps to
    ``pk``. Breadth first over the reversed graph, so each model gets its shortest chain."""
    from organizations.models import Organization

    every = apps.get_models(include_auto_created=True)
    pointing_at: dict[type[models.Model], list[tuple[type[models.Model], str]]] = collections.defaultdict(list)
    for model in every:
        for name, target in _forward_relations(model):
            pointing_at[target].append((model, name))
    paths: dict[type[models.Model], str] = {Organization: "pk"}
    queue: collections.deque[type[models.Model]] = collections.deque([Organization])
    while queue:
        target = queue.popleft()
        for model, name in pointing_at[target]:
            if model in paths:
                continue
            tail = paths[target]
            paths[model] = name if tail == "pk" else f"{name}__{tail}"
            queue.append(model)
    return paths


def _owned(organization, model: type[models.Model], path: str):
    columns = [field.attname for field in model._meta.concrete_fields]
    return model._default_manager.filter(**{path: organization.pk}).values_list(*columns)


@functools.lru_cache(maxsize=32)
def _fingerprint_query(organization_pk: Any) -> tuple[str, tuple[Any, ...]]:
    """One statement over every organization-owned model: per model, its label, its row count, and the md5 of its rows
    as PostgreSQL prints them (every concrete column), sorted, so no change to any column of any row goes unseen."""
    from organizations.models import Organization

    organization = Organization(pk=organization_pk)
    parts, params = [], []
    for model, path in sorted(organization_paths().items(), key=lambda item: item[0]._meta.label):
        sql, model_params = _owned(organization, model, path).query.sql_with_params()
        parts.append(
            f"SELECT %s AS label, count(*) AS rows, md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
            f"AS digest FROM ({sql}) AS t"
        )
        params += [model._meta.label, *model_params]
    return " UNION ALL ".join(parts), tuple(params)


def fingerprint(organization) -> dict[str, tuple[int, str]]:
    """Everything of `organization` a request could change, in every organization-owned model, as comparable data:
    per model, how many rows it owns and a digest of their every column. One query, so it can run around every
    request of the tenancy tests (per model and in Python it was most of their time)."""
    sql, params = _fingerprint_query(organization.pk)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {label: (rows, digest) for label, rows, digest in cursor.fetchall()}


def public_ids(organization) -> set[str]:
    """The public identifiers (``dep_…``, ``key_…``) of every row `organization` owns: none may appear in an answer
    to a member of another organization."""
    found: set[str] = set()
    for model, path in organization_paths().items():
        if any(field.attname == "public_id" for field in model._meta.concrete_fields):
            found.update(model._default_manager.filter(**{path: organization.pk}).values_list("public_id", flat=True))
    return {value for value in found if value}
