"""Invoices in the console: the list (number, period, status with paid/open/overdue badges, total), the HTML view and
the PDF download of an issued invoice. The documents are billing.documents' own, the same bytes the API serves; a
held draft has none. It never changes an invoice.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from billing import documents
from billing.models import Invoice, InvoiceStatus
from console.pages.billing import _money, account_of, billing_console

INVOICES_SHOWN = 200


def invoice_badge(invoice: Invoice, now) -> tuple[str, str]:
    """(label, tone) of an invoice's status as a person reads it: an open invoice past its due date is overdue."""
    if invoice.status == InvoiceStatus.OPEN and invoice.due_at is not None and invoice.due_at < now:
        return "overdue", "bad"
    badges: dict[str, tuple[str, str]] = {
        InvoiceStatus.PAID: ("paid", "ok"),
        InvoiceStatus.OPEN: ("open", "busy"),
        InvoiceStatus.DRAFT: ("held draft", "neutral"),
        InvoiceStatus.VOID: ("void", "neutral"),
        InvoiceStatus.UNCOLLECTIBLE: ("uncollectible", "bad"),
    }
    return badges.get(invoice.status, (invoice.status, "neutral"))


@login_required
@require_GET
def invoices(request, org_id):
    console = billing_console(request, org_id, "invoices")
    account = account_of(console)
    now = timezone.now()
    rows = []
    for invoice in Invoice.objects.filter(billing_account=account).order_by("-created_at", "-id")[:INVOICES_SHOWN]:
        label, tone = invoice_badge(invoice, now)
        rows.append(
            {
                "invoice": invoice,
                "label": label,
                "tone": tone,
                "total": _money(invoice.total, invoice.currency),
                "issued": invoice.status != InvoiceStatus.DRAFT,
                "holds": [reason.replace("_", " ") for reason in invoice.hold_reasons or []],
            }
        )
    return render(request, "console/billing/invoices.html", {"console": console, "rows": rows})


def _issued(console, inv_id: str) -> Invoice:
    invoice = (
        Invoice.objects.filter(billing_account__organization=console.organization, public_id=inv_id)
        .exclude(status=InvoiceStatus.DRAFT)
        .prefetch_related("lines")
        .first()
    )
    if invoice is None:
        raise Http404("No such invoice.")
    return invoice


@login_required
@require_GET
def invoice_html(request, org_id, inv_id):
    console = billing_console(request, org_id, "invoices")
    return HttpResponse(documents.invoice_html(_issued(console, inv_id)), content_type="text/html; charset=utf-8")


@login_required
@require_GET
def invoice_pdf(request, org_id, inv_id):
    console = billing_console(request, org_id, "invoices")
    invoice = _issued(console, inv_id)
    response = HttpResponse(documents.invoice_pdf(invoice), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{invoice.number}.pdf"'
    return response
