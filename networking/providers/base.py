"""The one small interface every cloud's peering adapter implements, and the plain values that cross it.

Adapters (aws.py, gcp.py, azure.py) are the only modules that import a vendor SDK. They never read or write the
database: the caller hands them the platform's network and the customer's side, and persists what they return.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal, Protocol

from celery.exceptions import SoftTimeLimitExceeded

# What a provider's answer means for us:
#   waiting — our side exists (or cannot exist yet); the customer still has something to do;
#   active  — traffic can flow both ways;
#   broken  — the provider says it never will without a new peering (rejected, deleted, disconnected, expired).
Status = Literal["waiting", "active", "broken"]


@dataclasses.dataclass(frozen=True)
class Platform:
    """The platform's side in one region: the region's `network` block and its decrypted credentials."""

    provider: str
    region: str
    network: Mapping
    credentials: Mapping = dataclasses.field(repr=False, default_factory=dict)
    # A CA bundle to verify the provider's endpoints with (a proxy or a private endpoint); None: the system's.
    ca_bundle: str | None = None

    @property
    def cidr(self) -> str:
        return self.network["cidr"]

    @property
    def endpoint(self) -> str | None:
        return self.network.get("endpoint") or None


@dataclasses.dataclass(frozen=True)
class Customer:
    """The customer's side of one peering, as validated by the pre-flight."""

    public_id: str  # our id of the peering: names and tags it at the provider
    cidr: str
    fields: Mapping  # the provider's fields (networking.checks.PROVIDER_FIELDS)
    # The public id of the organization asking: Azure checks the customer's VNet carries it (checks.AZURE_OWNER_TAG).
    organization: str = ""
    # Another live peering of the same platform network holds this very CIDR (this one failed before it ever worked,
    # so the range was free for it): rules keyed on the CIDR alone, such as AWS's security-group rule, are its own.
    cidr_in_use: bool = False

    def __getattr__(self, name: str):
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclasses.dataclass(frozen=True)
class CustomerStep:
    """What the customer must do in their own cloud, in words and as the exact commands."""

    summary: str
    commands: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"summary": self.summary, "commands": list(self.commands)}


@dataclasses.dataclass(frozen=True)
class Observation:
    status: Status
    provider_state: str  # the provider's own word: pending-acceptance, INACTIVE, Initiated…
    detail: str = ""
    ids: Mapping = dataclasses.field(default_factory=dict)  # provider ids to remember (merged into what is stored)


class ProviderError(Exception):
    """A provider call that did not succeed. `permanent`: retrying the same request cannot help (a bad id, a refusal);
    otherwise (throttling, a 5xx, a timeout, our own credentials) the caller retries with backoff."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


def raise_if_interrupted(exc: BaseException) -> None:
    """Raise `exc` again when it is the poll's task being interrupted: Celery's soft time limit, raised inside whatever
    call runs when it strikes, is no answer of the provider's. billiard makes SoftTimeLimitExceeded an Exception, so an
    adapter's catch-all would take it for one ("could not be reached"); every catch-all calls this first, and the poll
    (networking.services) says it ran out of time, whatever the provider."""
    if isinstance(exc, SoftTimeLimitExceeded):
        raise exc


class PeeringAdapter(Protocol):
    def request(self, platform: Platform, customer: Customer) -> Observation:
        """Create our side of the peering (or the request to the customer). Idempotent: a retry after a crash finds
        what an earlier attempt made. A failure rolls back whatever this call created before raising."""

    def refresh(self, platform: Platform, customer: Customer, ids: Mapping) -> Observation:
        """Read the peering's state at the provider, and finish our side once the customer's is there (routes and
        firewall rules on AWS), rolling those back if a later part fails."""

    def remove(self, platform: Platform, customer: Customer, ids: Mapping) -> None:
        """Delete everything of ours at the provider for this peering. Idempotent: what is already gone is fine."""

    def customer_step(self, platform: Platform, customer: Customer, ids: Mapping) -> CustomerStep:
        """The exact step the customer must take now. Pure: no provider call."""
