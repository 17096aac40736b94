"""An issued invoice as a document: the PDF (billing.pdf) and the HTML view, both from the stored invoice.

Reads only what the invoice froze at issue (lines, amounts, tax, parties); it never recomputes an amount.
"""

from __future__ import annotations

from decimal import Decimal

from django.template.loader import render_to_string

from billing.models import Invoice
from billing.money import format_money
from billing.pdf import InvoiceDocument, InvoiceLine, Party, render_invoice_pdf

UNIT_LABELS = {"hour": "hour", "year": "year", "upgrade": "item"}


def _party(snapshot: dict) -> Party:
    return Party(snapshot.get("name") or "", tuple(snapshot.get("address_lines") or ()), snapshot.get("vat_number"))


def invoice_document(invoice: Invoice) -> InvoiceDocument:
    lines = [
        InvoiceLine(
            line.description,
            line.quantity.normalize(),
            UNIT_LABELS.get(line.unit, line.unit),
            line.unit_price.normalize(),
            line.amount,
        )
        for line in invoice.lines.all()
    ]
    notes = []
    if invoice.kind == "annual":
        notes.append("Annual plan, prepaid. Coupons do not apply to annual plans.")
    return InvoiceDocument(
        number=invoice.number or f"DRAFT {invoice.public_id}",
        status=invoice.status,
        issue_date=(invoice.issued_at or invoice.created_at).date(),
        due_date=invoice.due_at.date() if invoice.due_at else None,
        period_start=invoice.period_start,
        period_end=invoice.period_end,
        currency=invoice.currency,
        seller=_party(invoice.seller),
        customer=_party(invoice.customer),
        lines=lines,
        subtotal_minor=invoice.subtotal,
        credits_minor=invoice.credits_applied,
        tax_treatment=invoice.tax_treatment,
        tax_rate=Decimal(invoice.tax_rate),
        tax_minor=invoice.tax,
        total_minor=invoice.total,
        mention=invoice.tax_mention or None,
        notes=tuple(notes),
    )


def invoice_pdf(invoice: Invoice) -> bytes:
    return render_invoice_pdf(invoice_document(invoice))


def invoice_html(invoice: Invoice) -> str:
    document = invoice_document(invoice)
    cur = document.currency
    return render_to_string(
        "billing/invoice.html",
        {
            "doc": document,
            "lines": [
                {
                    "description": line.description,
                    "quantity": f"{line.quantity:f}",
                    "unit": line.unit,
                    "unit_price": f"{line.unit_price:f} {cur}",
                    "amount": format_money(line.amount_minor, cur),
                }
                for line in document.lines
            ],
            "subtotal": format_money(document.subtotal_minor, cur),
            "credits": format_money(-document.credits_minor, cur),
            "tax": format_money(document.tax_minor, cur),
            "total": format_money(document.total_minor, cur),
            "rate": f"{document.tax_rate.normalize():f}",
        },
    )
