"""Billing records: accounts and the history of their billing details, VIES checks, metered usage and traffic,
annual subscriptions and quotes, invoices and credit notes, credits, coupons, payments, exchange rates, Stripe events.

Fields and constraints only: every change goes through billing.services. The database constraints are the
guarantees (one usage record per deployment, hour, product and tier; one open traffic row per deployment and day;
one live monthly invoice per account and period; one event per Stripe id; invoices and credit notes reconcile).
"""

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from billing.tax import TaxTreatment, VatStatus
from controlplane.ids import PublicIdField


class BillingAccount(models.Model):
    """One per organization, created lazily the first time billing needs it."""

    public_id = PublicIdField(prefix="bac")
    organization = models.OneToOneField(
        "organizations.Organization", on_delete=models.CASCADE, related_name="billing_account"
    )
    country = models.CharField(max_length=2, blank=True, help_text="ISO 3166-1 alpha-2.")
    company = models.CharField(max_length=200, blank=True, help_text="Empty for a consumer.")
    email = models.EmailField(blank=True)
    address = models.CharField(max_length=200, blank=True)
    city = models.CharField(max_length=100, blank=True)
    state = models.CharField(max_length=100, blank=True)
    postal_code = models.CharField(max_length=20, blank=True)
    tax_id = models.CharField(max_length=40, blank=True, help_text="VAT/GST number (EIN in the US), normalized.")
    currency = models.CharField(max_length=3, default="USD")
    vat_status = models.CharField(
        max_length=16, choices=[(s.value, s.value) for s in VatStatus], default=VatStatus.NONE.value
    )
    vat_status_message = models.CharField(max_length=300, blank=True)
    vat_checked_at = models.DateTimeField(null=True, blank=True)
    # VIES is asked again at this instant (None: nothing to ask): with backoff while the number is unconfirmed,
    # monthly once it is confirmed.
    vat_next_check_at = models.DateTimeField(null=True, blank=True)
    vat_check_failures = models.PositiveIntegerField(default=0, help_text="VIES checks in a row without an answer.")
    vat_consultation_number = models.CharField(
        max_length=64, blank=True, help_text="VIES consultation number of the last confirmation (proof of the check)."
    )
    vat_consulted_at = models.DateTimeField(null=True, blank=True)
    stripe_customer_id = models.CharField(max_length=64, blank=True)
    stripe_payment_method_id = models.CharField(max_length=64, blank=True)
    stripe_payment_method_created_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When Stripe created the SetupIntent that saved the card: an older card's notice, arriving late "
        "(Stripe delivers in no particular order), changes nothing.",
    )
    stripe_synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"{self.company or self.email or self.organization_id} ({self.public_id})"

    @property
    def is_business(self) -> bool:
        return bool(self.company.strip())


# The parts of a buyer's address an EU invoice must show (Art. 226(5) Directive 2006/112/EC), in form order.
ADDRESS_FIELDS = ("address", "postal_code", "city", "country")
# Countries without a postal code system: their addresses are complete without one.
COUNTRIES_WITHOUT_POSTAL_CODES = frozenset(
    {"AE", "AG", "AO", "AW", "BF", "BI", "BJ", "BS", "BW", "BZ", "CD", "CF", "CG", "CI", "CM", "DJ", "DM", "ER"}
    | {"FJ", "GA", "GD", "GH", "GM", "GQ", "GY", "HK", "KI", "KM", "KN", "KP", "LY", "ML", "MO", "MR", "MW", "NR"}
    | {"NU", "QA", "RW", "SB", "SC", "SL", "SO", "SR", "ST", "SY", "TD", "TF", "TG", "TK", "TL", "TO", "TV", "UG"}
    | {"VU", "YE", "ZW"}
)


def missing_address_fields(details) -> list[str]:
    """The parts of the buyer's full address that `details` (an account or a BillingDetails row) lacks."""
    missing = [name for name in ADDRESS_FIELDS if not (getattr(details, name) or "").strip()]
    if "postal_code" in missing and (details.country or "").upper() in COUNTRIES_WITHOUT_POSTAL_CODES:
        missing.remove("postal_code")
    return missing


class BillingDetails(models.Model):
    """The account's billing details over time: a new row from the instant they change, so that a month is invoiced
    and taxed by the details in force in it. The row without `valid_to` is the current one (mirrored on the account).

    A VIES answer about a number that was still unconfirmed is recorded on the row that carries the number (it says
    what the number was all along); a confirmed number found invalid later starts a new row from that check."""

    billing_account = models.ForeignKey(BillingAccount, on_delete=models.CASCADE, related_name="details_history")
    valid_from = models.DateTimeField()
    valid_to = models.DateTimeField(null=True, blank=True)
    country = models.CharField(max_length=2, blank=True)
    company = models.CharField(max_length=200, blank=True)
    email = models.EmailField(blank=True)
    address = models.CharField(max_length=200, blank=True)
    city = models.CharField(max_length=100, blank=True)
    state = models.CharField(max_length=100, blank=True)
    postal_code = models.CharField(max_length=20, blank=True)
    tax_id = models.CharField(max_length=40, blank=True)
    vat_status = models.CharField(
        max_length=16, choices=[(s.value, s.value) for s in VatStatus], default=VatStatus.NONE.value
    )
    vat_consultation_number = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["billing_account", "valid_from", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["billing_account"], condition=Q(valid_to__isnull=True), name="billing_details_one_current"
            ),
            models.CheckConstraint(
                condition=Q(valid_to__isnull=True) | Q(valid_to__gt=F("valid_from")), name="billing_details_ordered"
            ),
        ]
        indexes = [models.Index(fields=["billing_account", "valid_from"], name="billing_details_account_from")]

    @property
    def is_business(self) -> bool:
        return bool(self.company.strip())


class VatCheckOutcome(models.TextChoices):
    VALID = "valid"
    INVALID = "invalid"
    UNAVAILABLE = "unavailable"


class VatCheck(models.Model):
    """One consultation of VIES about an account's number, kept as proof: our own VAT number went as the requester
    and VIES answered with a consultation number (requestIdentifier) and its date."""

    billing_account = models.ForeignKey(BillingAccount, on_delete=models.CASCADE, related_name="vat_checks")
    checked_at = models.DateTimeField(default=timezone.now)
    country_code = models.CharField(max_length=2)
    vat_number = models.CharField(max_length=40)
    requester = models.CharField(max_length=40, blank=True, help_text="Our VAT number, sent as the requester.")
    outcome = models.CharField(max_length=16, choices=VatCheckOutcome.choices)
    consultation_number = models.CharField(max_length=64, blank=True)
    request_date = models.CharField(max_length=40, blank=True, help_text="VIES' requestDate, as it sent it.")
    error = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-checked_at", "-id"]
        indexes = [models.Index(fields=["billing_account", "checked_at"], name="vat_check_account_at")]


class UsageProduct(models.TextChoices):
    RUNNING = "running", "Running (hourly)"
    RETENTION = "retention", "Stopped (data retention)"


class UsageRecord(models.Model):
    """Billable seconds of one deployment in one hour slot for one product on one tier, at the unit price then in
    force. A tier change inside the hour makes two records: the seconds before it on the old tier, after it on the
    new. `unit_price` None is unpriced usage: seconds recorded while the account's currency had no price."""

    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.PROTECT, related_name="usage_records")
    organization = models.ForeignKey(
        "organizations.Organization", on_delete=models.CASCADE, related_name="usage_records"
    )
    tier = models.ForeignKey("deployments.Tier", on_delete=models.PROTECT, related_name="+")
    hour = models.DateTimeField(help_text="Start of the hour slot (UTC).")
    product = models.CharField(max_length=16, choices=UsageProduct.choices)
    seconds = models.PositiveIntegerField()
    unit_price = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="Price per hour, major units; empty: unpriced.",
    )
    currency = models.CharField(max_length=3)
    invoice = models.ForeignKey("Invoice", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # An hour is metered once: this constraint, not the metering code, is the guarantee.
            models.UniqueConstraint(fields=["deployment", "hour", "product", "tier"], name="usage_once_per_hour_tier"),
            models.CheckConstraint(condition=Q(seconds__gte=1, seconds__lte=3600), name="usage_seconds_in_hour"),
        ]
        indexes = [
            models.Index(fields=["organization", "hour"], name="usage_org_hour"),
            # What the next invoice holds: small, whatever the history.
            models.Index(
                fields=["organization", "hour"], condition=Q(invoice__isnull=True), name="usage_unbilled_org_hour"
            ),
            models.Index(fields=["hour"], condition=Q(unit_price__isnull=True), name="usage_unpriced_hour"),
        ]


class TrafficAllowance(models.Model):
    """Catalog data: the traffic a deployment of `plan` may use each calendar month before it is billed per GiB
    (1024³ bytes). The field keeps its name `included_gb`; its unit is GiB."""

    plan = models.ForeignKey("deployments.Plan", on_delete=models.PROTECT, related_name="+")
    included_gb = models.PositiveIntegerField(
        "included GiB", help_text="Traffic included each calendar month, in GiB (1 GiB = 1024³ bytes)."
    )
    valid_from = models.DateField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["plan", "valid_from"], name="traffic_allowance_unique")]

    def __str__(self):
        return f"{self.plan_id}: {self.included_gb} GiB from {self.valid_from}"


class TrafficCounter(models.Model):
    """The broker's own cumulative byte counters as last seen, per deployment: what the next sample is compared
    with. A broker restart resets them; billing.traffic counts the bytes since the restart, never a negative."""

    deployment = models.OneToOneField(
        "deployments.Deployment", on_delete=models.CASCADE, related_name="traffic_counter"
    )
    sampled_at = models.DateTimeField()
    bytes_received = models.BigIntegerField()
    bytes_sent = models.BigIntegerField()
    uptime_seconds = models.FloatField(null=True, blank=True)
    resets = models.PositiveIntegerField(default=0)


class TrafficRecord(models.Model):
    """Bytes in plus out of one deployment on one UTC day, not yet invoiced while `invoice` is empty. Bytes counted
    after the day's row was invoiced start a new open row for that day: late traffic, on the next invoice."""

    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.PROTECT, related_name="+")
    organization = models.ForeignKey("organizations.Organization", on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    bytes = models.BigIntegerField(default=0)
    invoice = models.ForeignKey("Invoice", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "day"], condition=Q(invoice__isnull=True), name="traffic_one_open_row_per_day"
            ),
            models.CheckConstraint(condition=Q(bytes__gte=0), name="traffic_bytes_not_negative"),
        ]
        indexes = [
            models.Index(
                fields=["organization", "day"], condition=Q(invoice__isnull=True), name="traffic_unbilled_org_day"
            ),
            models.Index(fields=["deployment", "day"], name="traffic_deployment_day"),
        ]


class MeteringCursor(models.Model):
    """A single row: every hour slot before `metered_until` has been metered."""

    metered_until = models.DateTimeField()


class MonthClose(models.Model):
    """A month whose close has run: usage of it metered afterwards is late usage, billed on the next invoice."""

    period_start = models.DateField(unique=True)
    closed_at = models.DateTimeField()
    invoices = models.PositiveIntegerField(default=0, help_text="Issued by the last run.")
    held = models.PositiveIntegerField(default=0, help_text="Held as drafts by the last run.")


class SubscriptionStatus(models.TextChoices):
    ACTIVE = "active"
    ENDED = "ended"
    RENEWED = "renewed"


class AnnualSubscription(models.Model):
    """An annual prepaid plan covering one deployment for its term: hourly metering skips the covered seconds."""

    public_id = PublicIdField(prefix="sub")
    billing_account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="subscriptions")
    deployment = models.ForeignKey(
        "deployments.Deployment", on_delete=models.PROTECT, related_name="annual_subscriptions"
    )
    tier = models.ForeignKey("deployments.Tier", on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=16, choices=SubscriptionStatus.choices, default=SubscriptionStatus.ACTIVE)
    term_start = models.DateTimeField()
    term_end = models.DateTimeField()
    currency = models.CharField(max_length=3)
    hourly_price = models.DecimalField(max_digits=14, decimal_places=6)
    annual_price = models.BigIntegerField(help_text="Minor units, before tax.")
    auto_renew = models.BooleanField(default=False)
    reminder_sent_at = models.DateTimeField(null=True, blank=True)
    renewed_from = models.OneToOneField(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="renewal"
    )
    end_reason = models.CharField(
        max_length=32, blank=True, help_text="Why it ended: expired, renewal_failed, or voided (its invoice was)."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["deployment"], condition=Q(status="active"), name="one_active_subscription_per_deployment"
            ),
            models.CheckConstraint(condition=Q(term_end__gt=F("term_start")), name="subscription_term_positive"),
        ]


class AnnualQuote(models.Model):
    """An immutable offer to switch a deployment to an annual plan; accepted at most once, before it expires."""

    public_id = PublicIdField(prefix="quo")
    billing_account = models.ForeignKey(BillingAccount, on_delete=models.CASCADE, related_name="quotes")
    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="annual_quotes")
    tier = models.ForeignKey("deployments.Tier", on_delete=models.PROTECT, related_name="+")
    currency = models.CharField(max_length=3)
    hourly_price = models.DecimalField(max_digits=14, decimal_places=6)
    annual_price = models.BigIntegerField()
    hourly_equivalent = models.BigIntegerField(help_text="8,760 hours at the hourly price, minor units.")
    saving = models.BigIntegerField()
    tax_treatment = models.CharField(max_length=16, choices=[(t.value, t.value) for t in TaxTreatment])
    tax_rate = models.DecimalField(max_digits=5, decimal_places=2)
    tax = models.BigIntegerField()
    total = models.BigIntegerField()
    accrued_this_month = models.BigIntegerField(help_text="Hourly usage of this deployment so far this month.")
    term_start = models.DateTimeField()
    term_end = models.DateTimeField()
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    subscription = models.OneToOneField(
        AnnualSubscription, on_delete=models.SET_NULL, null=True, blank=True, related_name="quote"
    )
    created_at = models.DateTimeField(default=timezone.now)


class InvoiceStatus(models.TextChoices):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


class InvoiceKind(models.TextChoices):
    MONTHLY = "monthly", "Monthly usage"
    ANNUAL = "annual", "Annual plan (prepaid)"
    ANNUAL_UPGRADE = "annual_upgrade", "Annual plan tier upgrade"
    # Usage of an earlier month metered after its close, when that month's tax decision differs from the current
    # month's (Art. 64(1) Directive 2006/112/EC): billed on its own, by its month's rules.
    LATE_USAGE = "late_usage", "Late usage of an earlier month"


class HoldReason(models.TextChoices):
    """Why an invoice waits as a draft. It is issued the moment the last reason goes away, never before."""

    ADDRESS_INCOMPLETE = "address_incomplete", "The buyer's full address is missing"
    UNPRICED_USAGE = "unpriced_usage", "Usage without a price in the account's currency"
    EXCHANGE_RATE_MISSING = "exchange_rate_missing", "No exchange rate for the VAT in the national currency"


class Invoice(models.Model):
    public_id = PublicIdField(prefix="inv")
    billing_account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="invoices")
    kind = models.CharField(max_length=16, choices=InvoiceKind.choices)
    status = models.CharField(max_length=16, choices=InvoiceStatus.choices, default=InvoiceStatus.DRAFT)
    number = models.CharField(
        max_length=32,
        null=True,
        blank=True,
        unique=True,
        help_text="Assigned at finalization, sequential per seller and year.",
    )
    currency = models.CharField(max_length=3)
    period_start = models.DateField(null=True, blank=True)
    period_end = models.DateField(null=True, blank=True, help_text="Last day of the period, inclusive.")
    subtotal = models.BigIntegerField(default=0)
    credits_applied = models.BigIntegerField(default=0)
    tax_treatment = models.CharField(max_length=16, choices=[(t.value, t.value) for t in TaxTreatment])
    tax_rate = models.DecimalField(max_digits=5, decimal_places=2)
    tax_mention = models.CharField(max_length=300, blank=True)
    tax = models.BigIntegerField(default=0)
    total = models.BigIntegerField(default=0)
    # What the invoice was issued to and from, frozen: later account edits never rewrite an issued invoice.
    customer = models.JSONField(default=dict)
    seller = models.JSONField(default=dict)
    subscription = models.ForeignKey(
        AnnualSubscription, on_delete=models.PROTECT, null=True, blank=True, related_name="invoices"
    )
    details = models.ForeignKey(
        BillingDetails,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The billing details the invoice was taxed by (those in force in its period).",
    )
    hold_reasons = models.JSONField(default=list, blank=True, help_text="Why a draft waits; empty once issued.")
    notes = models.JSONField(default=list, blank=True, help_text="Statements printed on the invoice.")
    # The VAT also in the national currency of the seller's country when the invoice is in another currency
    # (Art. 230 Directive 2006/112/EC): ECB reference rate, its date, and the VAT at that rate.
    vat_currency = models.CharField(max_length=3, blank=True)
    vat_exchange_rate = models.DecimalField(
        max_digits=24, decimal_places=12, null=True, blank=True, help_text="Units of vat_currency per unit."
    )
    vat_exchange_rate_date = models.DateField(null=True, blank=True)
    tax_in_vat_currency = models.BigIntegerField(null=True, blank=True, help_text="Minor units of vat_currency.")
    issued_at = models.DateTimeField(null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    payment_attempts = models.PositiveIntegerField(default=0)
    overdue_reminders_sent = models.PositiveSmallIntegerField(default=0)
    # One-to-one: a voided invoice is billed again at most once (each replacement, voided, may be replaced in turn).
    replaces = models.OneToOneField(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="replaced_by",
        help_text="The voided invoice this one bills again (an annual upgrade's, or a late-usage month's).",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # Every invoice reconciles to the cent.
            models.CheckConstraint(
                condition=Q(total=F("subtotal") - F("credits_applied") + F("tax")), name="invoice_total_reconciles"
            ),
            models.CheckConstraint(
                condition=Q(credits_applied__gte=0, credits_applied__lte=F("subtotal"), tax__gte=0, subtotal__gte=0),
                name="invoice_amounts_sane",
            ),
            models.CheckConstraint(
                condition=Q(status="draft") | Q(number__isnull=False), name="invoice_number_when_final"
            ),
            # A voided invoice makes room for the corrected one of the same month.
            models.UniqueConstraint(
                fields=["billing_account", "period_start"],
                condition=Q(kind="monthly") & ~Q(status="void"),
                name="one_live_monthly_invoice_per_period",
            ),
        ]
        indexes = [models.Index(fields=["status", "due_at"], name="invoice_status_due")]

    def __str__(self):
        return self.number or f"draft {self.public_id}"

    @property
    def period_name(self) -> str:
        """How a notice names the invoice by its period: "invoice for December 2026", or "late-usage invoice for
        December 2026" for December's late usage (not December's monthly invoice); "invoice" without a period."""
        if self.period_start is None:
            return "invoice"
        late = "late-usage " if self.kind == InvoiceKind.LATE_USAGE else ""
        return f"{late}invoice for {self.period_start:%B %Y}"

    @property
    def taxable_amount(self) -> int:
        return self.subtotal - self.credits_applied


class InvoiceLine(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    deployment = models.ForeignKey(
        "deployments.Deployment", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    product = models.CharField(max_length=32)
    description = models.CharField(max_length=300)
    seconds = models.PositiveIntegerField(null=True, blank=True)
    quantity = models.DecimalField(max_digits=18, decimal_places=6)
    unit = models.CharField(max_length=16)
    # 14 integer digits: a year prepaid in a currency of small units (277,363,500 VND for a 10k tier) is one unit.
    unit_price = models.DecimalField(max_digits=20, decimal_places=6, help_text="Major units per unit.")
    amount = models.BigIntegerField(help_text="Minor units, rounded half-up once.")
    tier = models.ForeignKey("deployments.Tier", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    usage_month = models.DateField(
        null=True, blank=True, help_text="First day of the month the usage belongs to; earlier than the period: late."
    )
    bytes = models.BigIntegerField(null=True, blank=True, help_text="Traffic lines: bytes in plus out counted.")

    class Meta:
        ordering = ["id"]


class NumberSeries(models.TextChoices):
    INVOICE = "invoice"
    CREDIT_NOTE = "credit_note"


class InvoiceNumberCounter(models.Model):
    """The last number given per seller, series (invoices, credit notes) and year; locked (SELECT … FOR UPDATE)
    while numbers are assigned, so numbering has no gaps: a rolled-back finalization rolls the counter back."""

    seller = models.CharField(max_length=64)
    series = models.CharField(max_length=16, choices=NumberSeries.choices, default=NumberSeries.INVOICE)
    year = models.PositiveSmallIntegerField()
    last_number = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["seller", "series", "year"], name="invoice_counter_unique_per_series")
        ]


class CreditNote(models.Model):
    """Cancels one issued invoice: its own gap-free number series, the invoice's lines and amounts negated, the
    parties and tax as the invoice had them. The invoice it cancels is void; its usage can be invoiced again."""

    public_id = PublicIdField(prefix="crn")
    invoice = models.OneToOneField(Invoice, on_delete=models.PROTECT, related_name="credit_note")
    billing_account = models.ForeignKey(BillingAccount, on_delete=models.PROTECT, related_name="credit_notes")
    number = models.CharField(max_length=32, unique=True)
    currency = models.CharField(max_length=3)
    subtotal = models.BigIntegerField()
    credits_applied = models.BigIntegerField()
    tax = models.BigIntegerField()
    total = models.BigIntegerField()
    tax_treatment = models.CharField(max_length=16, choices=[(t.value, t.value) for t in TaxTreatment])
    tax_rate = models.DecimalField(max_digits=5, decimal_places=2)
    tax_mention = models.CharField(max_length=300, blank=True)
    vat_currency = models.CharField(max_length=3, blank=True)
    vat_exchange_rate = models.DecimalField(max_digits=24, decimal_places=12, null=True, blank=True)
    vat_exchange_rate_date = models.DateField(null=True, blank=True)
    tax_in_vat_currency = models.BigIntegerField(null=True, blank=True)
    customer = models.JSONField(default=dict)
    seller = models.JSONField(default=dict)
    reason = models.CharField(max_length=300, blank=True)
    issued_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(total=F("subtotal") - F("credits_applied") + F("tax")), name="credit_note_reconciles"
            ),
            models.CheckConstraint(
                condition=Q(subtotal__lte=0, tax__lte=0, credits_applied__lte=0, credits_applied__gte=F("subtotal")),
                name="credit_note_amounts_negative",
            ),
        ]

    def __str__(self):
        return self.number


class CreditNoteLine(models.Model):
    credit_note = models.ForeignKey(CreditNote, on_delete=models.CASCADE, related_name="lines")
    deployment = models.ForeignKey(
        "deployments.Deployment", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    product = models.CharField(max_length=32)
    description = models.CharField(max_length=300)
    quantity = models.DecimalField(max_digits=18, decimal_places=6)
    unit = models.CharField(max_length=16)
    unit_price = models.DecimalField(max_digits=20, decimal_places=6)  # as InvoiceLine.unit_price
    amount = models.BigIntegerField(help_text="Minor units, the invoice line's amount negated.")

    class Meta:
        ordering = ["id"]


class ExchangeRate(models.Model):
    """ECB euro reference rates as dated data: on `on`, one euro was worth `rate` units of `currency`."""

    currency = models.CharField(max_length=3)
    on = models.DateField()
    rate = models.DecimalField(max_digits=20, decimal_places=10)
    source = models.CharField(max_length=300, blank=True)
    loaded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-on", "currency"]
        constraints = [
            models.UniqueConstraint(fields=["currency", "on"], name="exchange_rate_once_per_day"),
            models.CheckConstraint(condition=Q(rate__gt=0), name="exchange_rate_positive"),
        ]


class CreditKind(models.TextChoices):
    PROMOTION = "promotion"
    COUPON = "coupon"
    REFUND = "refund"
    PREPAID = "prepaid"


class Coupon(models.Model):
    code = models.CharField(max_length=40, unique=True, help_text="Stored upper case.")
    amount = models.BigIntegerField(help_text="Credit granted, minor units of `currency`.")
    currency = models.CharField(max_length=3)
    valid_until = models.DateTimeField(null=True, blank=True, help_text="Redeemable until then.")
    credit_valid_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="The granted credit expires this many days later."
    )
    max_redemptions = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="coupon_amount_positive")]

    def __str__(self):
        return self.code


class CreditGrant(models.Model):
    """A credit on the ledger; `remaining` goes down as invoices consume it, oldest grant first."""

    public_id = PublicIdField(prefix="crd")
    billing_account = models.ForeignKey(BillingAccount, on_delete=models.CASCADE, related_name="credits")
    kind = models.CharField(max_length=16, choices=CreditKind.choices)
    description = models.CharField(max_length=200, blank=True)
    currency = models.CharField(max_length=3)
    amount = models.BigIntegerField()
    remaining = models.BigIntegerField()
    granted_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    coupon = models.ForeignKey(Coupon, on_delete=models.PROTECT, null=True, blank=True, related_name="grants")
    source_invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, null=True, blank=True, related_name="+")

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(amount__gt=0, remaining__gte=0, remaining__lte=F("amount")),
                name="credit_remaining_within_amount",
            ),
            # A coupon is redeemed once per billing account.
            models.UniqueConstraint(
                fields=["billing_account", "coupon"], condition=Q(coupon__isnull=False), name="coupon_once_per_account"
            ),
        ]


class CreditApplication(models.Model):
    grant = models.ForeignKey(CreditGrant, on_delete=models.PROTECT, related_name="applications")
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="credit_applications")
    amount = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="credit_application_positive")]


class Payment(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="payments")
    method = models.CharField(max_length=16, choices=[("stripe", "Stripe"), ("manual", "Bank transfer (manual)")])
    attempt = models.PositiveIntegerField(default=1)
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=24)
    payment_intent_id = models.CharField(max_length=64, blank=True)
    failure_message = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)


class StripeEvent(models.Model):
    """Every webhook event we accepted, once: a replay finds its row and changes nothing."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)
    outcome = models.CharField(max_length=200, blank=True)
