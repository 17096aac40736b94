"""The audit log: the API's own filter (actor, action, target, time range) over the organization's events, each row
linked to its target, newest first, a page at a time, and the same filter exported as CSV."""

import csv
import json

from django.contrib.auth.decorators import login_required
from django.http import StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from audit.api import AuditEventFilter
from audit.models import AuditEvent
from console import selectors, tenancy
from console.forms import AuditFilterForm
from controlplane.ids import holds_nul
from deployments.models import Deployment

PAGE_SIZE = 50
CSV_COLUMNS = [
    "created_at",
    "actor",
    "api_key",
    "action",
    "target_type",
    "target_id",
    "summary",
    "via",
    "ip",
    "user_agent",
    "request_id",
    "operation_id",
    "id",
]


def _filtered(console, form):
    queryset = selectors.audit_events(organization=console.organization)
    if not form.is_valid():
        return queryset.none()
    data = {}
    for name in ("actor", "action", "target"):
        if form.cleaned_data.get(name):
            data[name] = form.cleaned_data[name]
    for name in ("since", "until"):
        if form.cleaned_data.get(name):
            data[name] = form.cleaned_data[name].isoformat()
    return AuditEventFilter(data=data, queryset=queryset).qs


def _link_targets(console, events) -> None:
    """Each event's `.target_url`: its target's page where the console has one (one query for all deployments)."""
    org = console.organization.public_id
    deployment_ids = {e.target_id for e in events if e.target_type == "deployment"}
    deployment_ids |= {
        e.summary.get("deployment")
        for e in events
        if e.target_type == "maintenancewindow" and isinstance(e.summary, dict) and e.summary.get("deployment")
    }
    deployments = {
        public_id: project_id
        for public_id, project_id in Deployment.objects.filter(
            project__organization=console.organization, public_id__in=deployment_ids
        ).values_list("public_id", "project__public_id")
    }
    projects = {p.public_id for p in console.projects}
    for event in events:
        target, url = event.target_id, None
        if event.target_type == "maintenancewindow" and isinstance(event.summary, dict):
            target = event.summary.get("deployment") or target
        if target in deployments and deployments[target] in projects:
            url = reverse("console:deployment", args=[org, deployments[target], target])
        elif event.target_type == "project" and target in projects:
            url = reverse("console:project", args=[org, target])
        elif event.target_type in ("membership", "invitation") and console.can("member:read"):
            url = reverse("console:members", args=[org])
        elif event.target_type == "apikey" and console.can("apikey:read"):
            url = reverse("console:api-keys", args=[org])
        elif event.target_type == "organization":
            url = reverse("console:organization", args=[org])
        event.target_url = url


@login_required
@require_GET
def audit(request, org_id):
    console = tenancy.for_organization(request, org_id, section="audit")
    console.require("audit:read")
    console.crumb("Audit log")
    form = AuditFilterForm(request.GET or None)
    queryset = _filtered(console, form) if request.GET else selectors.audit_events(organization=console.organization)
    before = request.GET.get("before")
    if before and not holds_nul(before):  # an anchor that cannot exist is ignored, as one that no longer does
        anchor = AuditEvent.objects.filter(organization=console.organization, public_id=before).first()
        if anchor is not None:
            queryset = queryset.filter(created_at__lte=anchor.created_at).exclude(
                created_at=anchor.created_at, id__gte=anchor.id
            )
    events = list(queryset.select_related(None)[: PAGE_SIZE + 1])
    more = len(events) > PAGE_SIZE
    events = events[:PAGE_SIZE]
    _link_targets(console, events)
    query = request.GET.copy()
    query.pop("before", None)
    older = None
    if more:
        query["before"] = events[-1].public_id
        older = f"?{query.urlencode()}"
    export_query = request.GET.copy()
    export_query.pop("before", None)
    context = {
        "console": console,
        "form": form,
        "events": events,
        "older": older,
        "export_url": reverse("console:audit-csv", args=[org_id])
        + (f"?{export_query.urlencode()}" if export_query else ""),
    }
    return render(
        request, "console/audit/list.html", context, status=200 if form.is_bound is False or form.is_valid() else 400
    )


class _Echo:
    def write(self, value):
        return value


def _cell(value) -> str:
    text = "" if value is None else str(value)
    # A cell starting with one of these is a formula to a spreadsheet: quote it so it stays text.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@login_required
@require_GET
def audit_csv(request, org_id):
    console = tenancy.for_organization(request, org_id, section="audit")
    console.require("audit:read")
    form = AuditFilterForm(request.GET or None)
    queryset = _filtered(console, form) if request.GET else selectors.audit_events(organization=console.organization)
    writer = csv.writer(_Echo())

    def rows():
        yield writer.writerow(CSV_COLUMNS)
        for event in queryset.iterator(chunk_size=500):
            yield writer.writerow(
                [
                    _cell(value)
                    for value in (
                        event.created_at.isoformat(),
                        event.actor_email,
                        event.api_key_prefix,
                        event.action,
                        event.target_type,
                        event.target_id,
                        json.dumps(event.summary, sort_keys=True),
                        event.via,
                        event.ip,
                        event.user_agent,
                        event.request_id,
                        event.operation_id,
                        event.public_id,
                    )
                ]
            )

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="audit-{console.organization.public_id}.csv"'
    return response
