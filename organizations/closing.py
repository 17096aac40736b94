"""What still runs or is owed in an organization, and what must be turned off when it closes, as the apps above
organizations (deployments, billing, networking, notifications) see it: each registers in its AppConfig.ready(), so
organizations never imports them. organization_delete asks every check under the organization's lock and refuses
while any answers; once none does, it runs every closing step in the same transaction.

A check only reads: it never writes, calls the network or raises. A step only writes its own app's rows.
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


ClosingStep = Callable[..., dict[str, list[str]]]

_steps: list[ClosingStep] = []


def on_closing(step: ClosingStep) -> ClosingStep:
    """Register `step(organization=..., now=...) -> {summary key: [public ids]}`: what the app turns off for good
    when the organization closes (nobody is left to act on it or to be told), returned for organization.delete's
    audit summary. It runs inside organization_delete's transaction, under the organization's lock, so it commits or
    rolls back with the closing. Registering the same function twice keeps one."""
    if step not in _steps:
        _steps.append(step)
    return step


def closing_steps_run(organization, *, now) -> dict[str, list[str]]:
    """Run every closing step for `organization`; what they turned off, merged."""
    turned_off: dict[str, list[str]] = {}
    for step in list(_steps):
        turned_off.update(step(organization=organization, now=now))
    return turned_off


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
