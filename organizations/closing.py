"""What still runs or is owed in an organization, as the apps above organizations (deployments, billing, networking)
see it: each registers a check in its AppConfig.ready(), so organizations never imports them. organization_delete
asks every check under the organization's lock and refuses while any answers.

A check only reads: it never writes, calls the network or raises.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class DeletionBlocker:
    """One reason an organization cannot be deleted yet. `code` is a stable kebab-case word (`deployments`,
    `unbilled-usage`, `invoices`, `annual-subscriptions`, `vpc-peerings`); `message` says what to do about it;
    `ids` names the objects at fault (public ids), at most a few."""

    code: str
    message: str
    ids: tuple[str, ...] = ()


DeletionCheck = Callable[..., list[DeletionBlocker]]

_checks: list[DeletionCheck] = []


def on_deletion_check(check: DeletionCheck) -> DeletionCheck:
    """Register `check(organization=...) -> [DeletionBlocker]`; registering the same function twice keeps one."""
    if check not in _checks:
        _checks.append(check)
    return check


def deletion_blockers(organization) -> list[DeletionBlocker]:
    """Everything that blocks deleting `organization` now, in the order the checks were registered."""
    return [blocker for check in list(_checks) for blocker in check(organization=organization)]


def named(ids: list[str], limit: int = 5) -> str:
    """`ids` for a message: the first few, and how many more."""
    shown = ", ".join(ids[:limit])
    return shown if len(ids) <= limit else f"{shown} and {len(ids) - limit} more"


def objects_blocking(code: str, ids: list[str], *, noun: str, state: str, remedy: str) -> list[DeletionBlocker]:
    """No blocker when `ids` is empty, else one that names them: objects_blocking("invoices", ids, noun="invoice",
    state="not paid", remedy="pay {them} first") reads "2 invoices are not paid (inv_…, inv_…): pay them first."."""
    if not ids:
        return []
    many = len(ids) > 1
    message = (
        f"{len(ids)} {noun}{'s are' if many else ' is'} {state} ({named(ids)}): "
        f"{remedy.format(them='them' if many else 'it')}."
    )
    return [DeletionBlocker(code, message, tuple(ids))]
