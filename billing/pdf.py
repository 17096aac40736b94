"""PDF rendering of an invoice or a credit note with reportlab, from a plain InvoiceDocument value.

Owns the layout only, with what an EU invoice must show (Art. 226 and 230 of Directive 2006/112/EC: the supply
period, both VAT numbers, the buyer's full address, the taxable amount per rate, the VAT also in the national
currency). Every amount arrives computed (minor units) and is printed as given, after a consistency check. It must
never compute tax or totals, nor read the database.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from billing.money import format_money, minor_units, normalize_currency

if TYPE_CHECKING:
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.platypus import Paragraph

# reportlab is imported where a PDF is rendered: it costs about 0.2 s, and every process that loads the billing app
# (web, Celery, agents, each test's worker) would pay it at start, most of them never rendering a PDF.

_TREATMENT_LABELS = {
    "domestic": "Domestic supply",
    "reverse_charge": "Reverse charge",
    "eu_consumer": "EU consumer (VAT of the customer's country)",
    "outside_scope": "Outside the scope of EU VAT",
}


@dataclass(frozen=True, slots=True)
class Party:
    name: str
    address_lines: tuple[str, ...] = ()
    vat_number: str | None = None


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    description: str
    quantity: Decimal
    unit: str
    # Minor units (int), or a Decimal in major units for prices finer than the minor unit (per-second rates).
    unit_price: int | Decimal
    amount_minor: int


@dataclass(frozen=True, slots=True)
class VatLine:
    """One row of the VAT breakdown: the taxable amount at a rate and the VAT on it."""

    rate: Decimal
    taxable_minor: int
    tax_minor: int


@dataclass(frozen=True, slots=True)
class NationalVat:
    """The VAT in the national currency (Art. 230): the amount, the rate used (units per unit of the document's
    currency) and the day of that rate."""

    currency: str
    tax_minor: int
    rate: Decimal
    rate_date: date


@dataclass(frozen=True)
class InvoiceDocument:
    number: str
    status: str
    issue_date: date
    due_date: date | None
    period_start: date | None
    period_end: date | None
    currency: str
    seller: Party
    customer: Party
    lines: Sequence[InvoiceLine | tuple]
    subtotal_minor: int
    credits_minor: int
    tax_treatment: str
    tax_rate: Decimal
    tax_minor: int
    total_minor: int
    mention: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    title: str = "Invoice"
    refers_to: str | None = None  # a credit note: the number of the invoice it cancels
    vat_lines: tuple[VatLine, ...] = ()
    national_vat: NationalVat | None = None

    def __post_init__(self) -> None:
        lines = tuple(line if isinstance(line, InvoiceLine) else InvoiceLine(*line) for line in self.lines)
        object.__setattr__(self, "lines", lines)
        object.__setattr__(self, "currency", normalize_currency(self.currency))
        if sum(line.amount_minor for line in lines) != self.subtotal_minor:
            raise ValueError("invoice lines do not add up to the subtotal")
        if self.subtotal_minor - self.credits_minor + self.tax_minor != self.total_minor:
            raise ValueError("subtotal - credits + tax does not equal the total")
        if self.vat_lines and sum(v.tax_minor for v in self.vat_lines) != self.tax_minor:
            raise ValueError("the VAT breakdown does not add up to the tax")


_FONTS: tuple[str, str] | None = None


def _fonts() -> tuple[str, str]:
    """A Unicode TrueType font pair (customer names are not Latin-1): DejaVu if installed, else reportlab's Vera."""
    global _FONTS
    if _FONTS is None:
        import reportlab
        from reportlab.pdfbase import pdfmetrics
        from reportlab.pdfbase.ttfonts import TTFont

        dejavu = "/usr/share/fonts/truetype/dejavu"
        vera = os.path.join(os.path.dirname(reportlab.__file__), "fonts")
        if os.path.exists(os.path.join(dejavu, "DejaVuSans.ttf")):
            regular, bold = os.path.join(dejavu, "DejaVuSans.ttf"), os.path.join(dejavu, "DejaVuSans-Bold.ttf")
        else:
            regular, bold = os.path.join(vera, "Vera.ttf"), os.path.join(vera, "VeraBd.ttf")
        pdfmetrics.registerFont(TTFont("InvoiceSans", regular))
        pdfmetrics.registerFont(TTFont("InvoiceSans-Bold", bold))
        _FONTS = ("InvoiceSans", "InvoiceSans-Bold")
    return _FONTS


def _unit_price(value: int | Decimal, currency: str) -> str:
    if isinstance(value, int):
        return format_money(value, currency)
    # Keep every significant digit of a sub-minor-unit price, but never fewer than the currency's decimals.
    places = max(minor_units(currency), -value.normalize().as_tuple().exponent)
    return f"{value:,.{places}f} {currency}"


def _quantity(value: Decimal) -> str:
    normalized = value.normalize()
    return f"{normalized:,f}" if normalized == normalized.to_integral() else f"{normalized:,}"


def _rate(value: Decimal) -> str:
    return f"{value.normalize():f} %"


def _date(value: date | None) -> str:
    return value.isoformat() if value else "-"


def national_vat_text(national: NationalVat, currency: str) -> str:
    return (
        f"VAT in {national.currency}: {format_money(national.tax_minor, national.currency)} "
        f"(1 {currency} = {national.rate.quantize(Decimal('0.000001')).normalize():f} {national.currency}, "
        "ECB reference rate of "
        f"{national.rate_date.isoformat()})"
    )


def render_invoice_pdf(invoice: InvoiceDocument) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.enums import TA_RIGHT
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    regular, bold = _fonts()
    base = ParagraphStyle("base", fontName=regular, fontSize=9, leading=11.5)
    strong = ParagraphStyle("strong", parent=base, fontName=bold)
    title = ParagraphStyle("title", parent=base, fontName=bold, fontSize=16, leading=20)
    right = ParagraphStyle("right", parent=base, alignment=TA_RIGHT)
    cur = invoice.currency

    def para(text: str, style: ParagraphStyle = base) -> Paragraph:
        return Paragraph(escape(text).replace("\n", "<br/>"), style)

    def party_block(label: str, party: Party) -> list[Paragraph]:
        block = [para(label, strong), para(party.name)]
        block += [para(line) for line in party.address_lines]
        if party.vat_number:
            block.append(para(f"VAT / tax id: {party.vat_number}"))
        return block

    story: list = [
        para(f"{invoice.title} {invoice.number}", title),
        para(f"Status: {invoice.status}"),
    ]
    if invoice.refers_to:
        story.append(para(f"Cancels invoice {invoice.refers_to}", strong))
    story.append(Spacer(1, 4 * mm))
    meta = [
        ["Issue date", _date(invoice.issue_date)],
        ["Due date", _date(invoice.due_date)],
        [
            "Supply period",
            f"{_date(invoice.period_start)} to {_date(invoice.period_end)}"
            if invoice.period_start or invoice.period_end
            else "-",
        ],
        ["Currency", cur],
    ]
    parties = Table(
        [[party_block("From", invoice.seller), party_block("Bill to", invoice.customer)]], colWidths=[90 * mm, 90 * mm]
    )
    parties.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    meta_table = Table([[para(k, strong), para(v)] for k, v in meta], colWidths=[30 * mm, 150 * mm])
    story += [parties, Spacer(1, 4 * mm), meta_table, Spacer(1, 6 * mm)]

    header = [para(h, strong) for h in ("Description", "Quantity", "Unit", "Unit price", "Amount")]
    rows = [header] + [
        [
            para(line.description),
            para(_quantity(line.quantity), right),
            para(line.unit),
            para(_unit_price(line.unit_price, cur), right),
            para(format_money(line.amount_minor, cur), right),
        ]
        for line in invoice.lines
    ]
    # repeatRows repeats the header on every page of a long invoice.
    lines_table = Table(rows, colWidths=[78 * mm, 22 * mm, 20 * mm, 30 * mm, 30 * mm], repeatRows=1)
    lines_table.setStyle(
        TableStyle(
            [
                ("LINEBELOW", (0, 0), (-1, 0), 0.8, colors.black),
                ("LINEBELOW", (0, 1), (-1, -1), 0.25, colors.lightgrey),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    story += [lines_table, Spacer(1, 6 * mm)]

    treatment = _TREATMENT_LABELS.get(invoice.tax_treatment, invoice.tax_treatment)
    totals = [
        ["Subtotal", format_money(invoice.subtotal_minor, cur)],
        ["Credits applied", format_money(-invoice.credits_minor, cur)],
        [f"VAT {_rate(invoice.tax_rate)} ({treatment})", format_money(invoice.tax_minor, cur)],
        ["Total", format_money(invoice.total_minor, cur)],
    ]
    totals_table = Table(
        [[para(label, strong if label == "Total" else base), para(value, right)] for label, value in totals],
        colWidths=[120 * mm, 60 * mm],
    )
    totals_table.setStyle(TableStyle([("LINEABOVE", (0, -1), (-1, -1), 0.8, colors.black)]))
    story += [totals_table, Spacer(1, 4 * mm)]
    if invoice.vat_lines:
        breakdown = [[para(h, strong) for h in ("VAT rate", "Taxable amount", "VAT")]] + [
            [
                para(_rate(v.rate)),
                para(format_money(v.taxable_minor, cur), right),
                para(format_money(v.tax_minor, cur), right),
            ]
            for v in invoice.vat_lines
        ]
        vat_table = Table(breakdown, colWidths=[60 * mm, 60 * mm, 60 * mm])
        vat_table.setStyle(TableStyle([("LINEBELOW", (0, 0), (-1, 0), 0.8, colors.black)]))
        story += [para("VAT breakdown", strong), vat_table, Spacer(1, 4 * mm)]
    if invoice.national_vat:
        story.append(para(national_vat_text(invoice.national_vat, cur)))
    story.append(para(f"Tax treatment: {invoice.tax_treatment}"))
    if invoice.mention:
        story.append(para(invoice.mention, strong))
    story += [para(note) for note in invoice.notes]

    def footer(canvas, doc) -> None:  # noqa: ANN001 (reportlab callback)
        canvas.saveState()
        canvas.setFont(regular, 8)
        canvas.drawRightString(A4[0] - 15 * mm, 10 * mm, f"{invoice.title} {invoice.number} - page {doc.page}")
        canvas.restoreState()

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=18 * mm,
        title=f"{invoice.title} {invoice.number}",
        author=invoice.seller.name,
    )
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()
