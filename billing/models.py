"""Billing records: accounts, metered usage, annual subscriptions and quotes, invoices, credits, coupons, payments,
Stripe webhook events.

Fields and constraints only: every change goes through billing.services. The database constraints are the
guarantees (one usage record per deployment, hour and product; one event per Stripe id; invoices reconcile).
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
    stripe_customer_id = models.CharField(max_length=64, blank=True)
    stripe_payment_method_id = models.CharField(max_length=64, blank=True)
    stripe_synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"{self.company or self.email or self.organization_id} ({self.public_id})"

    @property
    def is_business(self) -> bool:
        return bool(self.company.strip())


class UsageProduct(models.TextChoices):
    RUNNING = "running", "Running (hourly)"
    RETENTION = "retention", "Stopped (data retention)"


class UsageRecord(models.Model):
    """Billable seconds of one deployment in one hour slot for one product, at the unit price then in force."""

    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.PROTECT, related_name="usage_records")
    organization = models.ForeignKey(
        "organizations.Organization", on_delete=models.CASCADE, related_name="usage_records"
    )
    tier = models.ForeignKey("deployments.Tier", on_delete=models.PROTECT, related_name="+")
    hour = models.DateTimeField(help_text="Start of the hour slot (UTC).")
    product = models.CharField(max_length=16, choices=UsageProduct.choices)
    seconds = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=14, decimal_places=6, help_text="Price per hour, major units.")
    currency = models.CharField(max_length=3)
    invoice = models.ForeignKey("Invoice", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # An hour is metered once: this constraint, not the metering code, is the guarantee.
            models.UniqueConstraint(fields=["deployment", "hour", "product"], name="usage_once_per_hour"),
            models.CheckConstraint(condition=Q(seconds__gte=1, seconds__lte=3600), name="usage_seconds_in_hour"),
        ]
        indexes = [models.Index(fields=["organization", "hour"], name="usage_org_hour")]


class MeteringCursor(models.Model):
    """A single row: every hour slot before `metered_until` has been metered."""

    metered_until = models.DateTimeField()


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
    issued_at = models.DateTimeField(null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    payment_attempts = models.PositiveIntegerField(default=0)
    overdue_reminders_sent = models.PositiveSmallIntegerField(default=0)
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
            models.UniqueConstraint(
                fields=["billing_account", "period_start"],
                condition=Q(kind="monthly"),
                name="one_monthly_invoice_per_period",
            ),
        ]
        indexes = [models.Index(fields=["status", "due_at"], name="invoice_status_due")]

    def __str__(self):
        return self.number or f"draft {self.public_id}"


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
    unit_price = models.DecimalField(max_digits=14, decimal_places=6, help_text="Major units per unit.")
    amount = models.BigIntegerField(help_text="Minor units, rounded half-up once.")

    class Meta:
        ordering = ["id"]


class InvoiceNumberCounter(models.Model):
    """The last number given per seller and year; locked (SELECT … FOR UPDATE) while numbers are assigned, so
    numbering has no gaps: a rolled-back finalization rolls the counter back with it."""

    seller = models.CharField(max_length=64)
    year = models.PositiveSmallIntegerField()
    last_number = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["seller", "year"], name="invoice_counter_unique")]


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
