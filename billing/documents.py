"""An issued invoice or credit note as a document: the PDF (billing.pdf) and the HTML view, from what is stored.

Reads only what the document froze at issue (lines, amounts, tax, parties, exchange rate); it never recomputes an
amount, and never renders a held draft as if it were an invoice.
"""

from __future__ import annotations

from decimal import Decimal

from django.template.loader import render_to_string

from billing.models import CreditNote, Invoice, InvoiceKind
from billing.money import format_money
from billing.pdf import InvoiceDocument, InvoiceLine, NationalVat, Party, VatLine, national_vat_text, render_invoice_pdf

# Traffic lines issued before the unit was spelled "GiB" stored "GB" (the same 1024³ bytes): they render as issued.
UNIT_LABELS = {"hour": "hour", "year": "year", "upgrade": "item"}


def _party(snapshot: dict) -> Party:
    return Party(snapshot.get("name") or "", tuple(snapshot.get("address_lines") or ()), snapshot.get("vat_number"))


def _lines(rows) -> list[InvoiceLine]:
    return [
        InvoiceLine(
            line.description,
            line.quantity.normalize(),
            UNIT_LABELS.get(line.unit, line.unit),
            line.unit_price.normalize(),
            line.amount,
        )
        for line in rows
    ]


def _national(doc: Invoice | CreditNote) -> NationalVat | None:
    if not doc.vat_currency or doc.tax_in_vat_currency is None:
        return None
    rate, rate_date = doc.vat_exchange_rate, doc.vat_exchange_rate_date
    if rate is None or rate_date is None:
        # billing.invoicing.compose writes the four VAT-exchange fields together, and a credit note copies them.
        raise RuntimeError(f"{doc.public_id}: VAT in {doc.vat_currency} without the exchange rate or its date")
    return NationalVat(doc.vat_currency, doc.tax_in_vat_currency, rate, rate_date)


def invoice_document(invoice: Invoice) -> InvoiceDocument:
    notes = list(invoice.notes or [])
    if invoice.kind == "annual":
        notes.append("Annual plan, prepaid. Coupons do not apply to annual plans.")
    if invoice.kind == InvoiceKind.LATE_USAGE and invoice.period_start:
        notes.append(
            f"Late usage of an earlier month: usage of {invoice.period_start:%B %Y} metered after that month's "
            "invoice was issued, taxed by the rules in force in that month (Article 64(1), Council Directive "
            "2006/112/EC)."
        )
    if any(
        line.usage_month and line.usage_month < invoice.period_start
        for line in invoice.lines.all()
        if invoice.period_start
    ):
        notes.append("Lines marked late usage are usage of an earlier month metered after its invoice was issued.")
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
        lines=_lines(invoice.lines.all()),
        subtotal_minor=invoice.subtotal,
        credits_minor=invoice.credits_applied,
        tax_treatment=invoice.tax_treatment,
        tax_rate=Decimal(invoice.tax_rate),
        tax_minor=invoice.tax,
        total_minor=invoice.total,
        mention=invoice.tax_mention or None,
        notes=tuple(notes),
        vat_lines=(VatLine(Decimal(invoice.tax_rate), invoice.subtotal - invoice.credits_applied, invoice.tax),),
        national_vat=_national(invoice),
    )


def credit_note_document(note: CreditNote) -> InvoiceDocument:
    invoice = note.invoice
    return InvoiceDocument(
        number=note.number,
        status="issued",
        issue_date=note.issued_at.date(),
        due_date=None,
        period_start=invoice.period_start,
        period_end=invoice.period_end,
        currency=note.currency,
        seller=_party(note.seller),
        customer=_party(note.customer),
        lines=_lines(note.lines.all()),
        subtotal_minor=note.subtotal,
        credits_minor=note.credits_applied,
        tax_treatment=note.tax_treatment,
        tax_rate=Decimal(note.tax_rate),
        tax_minor=note.tax,
        total_minor=note.total,
        mention=note.tax_mention or None,
        notes=tuple(n for n in (note.reason and f"Reason: {note.reason}",) if n),
        title="Credit note",
        refers_to=invoice.number,
        vat_lines=(VatLine(Decimal(note.tax_rate), note.subtotal - note.credits_applied, note.tax),),
        national_vat=_national(note),
    )


def invoice_pdf(invoice: Invoice) -> bytes:
    return render_invoice_pdf(invoice_document(invoice))


def credit_note_pdf(note: CreditNote) -> bytes:
    return render_invoice_pdf(credit_note_document(note))


def document_html(document: InvoiceDocument) -> str:
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
            "vat_lines": [
                {
                    "rate": f"{v.rate.normalize():f}",
                    "taxable": format_money(v.taxable_minor, cur),
                    "tax": format_money(v.tax_minor, cur),
                }
                for v in document.vat_lines
            ],
            "national_vat": national_vat_text(document.national_vat, cur) if document.national_vat else "",
        },
    )


def invoice_html(invoice: Invoice) -> str:
    return document_html(invoice_document(invoice))


def credit_note_html(note: CreditNote) -> str:
    return document_html(credit_note_document(note))
