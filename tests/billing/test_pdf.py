import io
from datetime import date
from decimal import Decimal

import pytest
from pypdf import PdfReader

from billing.pdf import InvoiceDocument, InvoiceLine, Party, render_invoice_pdf
from billing.tax import REVERSE_CHARGE_MENTION


def _text(pdf: bytes) -> tuple[int, str]:
    reader = PdfReader(io.BytesIO(pdf))
    return len(reader.pages), "\n".join(page.extract_text() for page in reader.pages)


def make_invoice(lines, *, credits=0, rate=Decimal(0), treatment="reverse_charge", mention=REVERSE_CHARGE_MENTION):
    subtotal = sum(line[4] for line in lines)
    tax = int((Decimal(subtotal - credits) * rate / 100).quantize(Decimal(1)))
    return InvoiceDocument(
        number="EMQ-2025-000042",
        status="open",
        issue_date=date(2025, 11, 1),
        due_date=date(2025, 11, 15),
        period_start=date(2025, 10, 1),
        period_end=date(2025, 10, 31),
        currency="EUR",
        seller=Party("Broker Cloud GmbH", ("Torstraße 1", "10119 Berlin", "Germany"), "DE136695976"),
        customer=Party("Société Exemple SAS", ("1 rue de Rivoli", "75001 Paris", "France"), "FR40303265045"),
        lines=lines,
        subtotal_minor=subtotal,
        credits_minor=credits,
        tax_treatment=treatment,
        tax_rate=rate,
        tax_minor=tax,
        total_minor=subtotal - credits + tax,
        mention=mention,
    )


def test_pdf_shows_number_totals_treatment_and_mention_when_reverse_charge():
    invoice = make_invoice(
        [
            ("Dedicated 1k - deployment prod-eu (running)", Decimal("720"), "hour", Decimal("0.36"), 25920),
            ("Traffic above free 100 GiB", Decimal("12.5"), "GiB", 15, 188),
        ],
        credits=1000,
    )
    pages, text = _text(render_invoice_pdf(invoice))
    assert pages == 1
    assert "EMQ-2025-000042" in text
    assert "261.08 EUR" in text  # subtotal
    assert "-10.00 EUR" in text  # credits
    assert "251.08 EUR" in text  # total
    assert "reverse_charge" in text
    assert "Article 196" in text and "2006/112/EC" in text
    assert "Société Exemple SAS" in text and "FR40303265045" in text
    assert "0.36 EUR" in text and "12.5" in text


def test_pdf_shows_rate_and_tax_without_mention_when_domestic():
    invoice = make_invoice(
        [("Annual plan Dedicated 1k", Decimal(1), "year", 268056, 268056)],
        rate=Decimal("19"),
        treatment="domestic",
        mention=None,
    )
    _, text = _text(render_invoice_pdf(invoice))
    assert "19 %" in text
    assert "509.31 EUR" in text  # 19 % of 2,680.56
    assert "3,189.87 EUR" in text
    assert "Reverse charge:" not in text


def test_pdf_spans_pages_with_every_line_when_many_lines():
    lines = [(f"Deployment d-{i:03d} running", Decimal(720), "hour", Decimal("0.36"), 25920) for i in range(120)]
    pages, text = _text(render_invoice_pdf(make_invoice(lines)))
    assert pages > 1
    assert all(f"d-{i:03d}" in text for i in range(120))
    assert "31,104.00 EUR" in text
    assert text.count("Description") == pages  # header repeated on every page


def test_invoice_document_rejects_totals_when_they_do_not_add_up():
    with pytest.raises(ValueError):
        InvoiceDocument(
            number="X",
            status="draft",
            issue_date=date(2025, 1, 1),
            due_date=None,
            period_start=None,
            period_end=None,
            currency="EUR",
            seller=Party("S"),
            customer=Party("C"),
            lines=[InvoiceLine("a", Decimal(1), "unit", 100, 100)],
            subtotal_minor=100,
            credits_minor=0,
            tax_treatment="domestic",
            tax_rate=Decimal(19),
            tax_minor=19,
            total_minor=100,
        )
