"""Which models belong to an organization, derived from the model graph, and a snapshot of one organization's rows.

Used by the tenancy tests, so that a model added tomorrow is in the fingerprint the moment it has a foreign-key path
to Organization; nothing here lists models by hand. Read-only: it never writes a row.
"""

from __future__ import annotations

import collections
from typing import Any

from django.apps import apps
from django.db import models


def _forward_relations(model: type[models.Model]):
    for field in model._meta.get_fields():
        if field.concrete and (field.many_to_one or field.one_to_one) and field.related_model is not None:
            yield field.name, field.related_model


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


def organization_rows(organization, model: type[models.Model], path: str) -> list[tuple[Any, ...]]:
    """The model's rows that belong to `organization`, every concrete column, in primary-key order."""
    columns = [field.attname for field in model._meta.concrete_fields]
    lookup = "pk" if path == "pk" else f"{path}"
    return [
        tuple(row)
        for row in model._default_manager.filter(**{lookup: organization.pk}).order_by("pk").values_list(*columns)
    ]


def fingerprint(organization) -> dict[str, list[tuple[Any, ...]]]:
    """Everything of `organization` a request could change, in every organization-owned model, as comparable data."""
    return {
        model._meta.label: organization_rows(organization, model, path)
        for model, path in sorted(organization_paths().items(), key=lambda item: item[0]._meta.label)
    }


def public_ids(organization) -> set[str]:
    """The public identifiers (``dep_…``, ``key_…``) of every row `organization` owns: none may appear in an answer
    to a member of another organization."""
    found: set[str] = set()
    for model, path in organization_paths().items():
        if any(field.attname == "public_id" for field in model._meta.concrete_fields):
            lookup = "pk" if path == "pk" else path
            found.update(model._default_manager.filter(**{lookup: organization.pk}).values_list("public_id", flat=True))
    return {value for value in found if value}
