"""Backoffice for billing: accounts with their details history and VIES consultations, invoices (void with a
credit note, corrected invoice, mark paid, refund credit, held drafts), credit notes, unpriced usage, credits and
coupons, exchange rates, traffic allowances.

Invoices are read-only here: every change goes through billing.services, so it is audited and reconciles.
Prices live in the deployments catalog admin.
"""

from django.contrib import admin, messages
from django.db import transaction

from audit.admin_mixins import AuditedModelAdmin
from billing import invoicing, services
from billing.models import (
    AnnualSubscription,
    BillingAccount,
    BillingDetails,
    Coupon,
    CreditGrant,
    CreditNote,
    CreditNoteLine,
    ExchangeRate,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceStatus,
    MonthClose,
    Payment,
    StripeEvent,
    TrafficAllowance,
    UsageRecord,
    VatCheck,
)
from controlplane.errors import Conflict, DomainError
from organizations.access import Principal


class _ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def get_readonly_fields(self, request, obj=None):
        return self.fields

    def has_add_permission(self, request, obj=None):
        return False


class VatCheckInline(_ReadOnlyInline):
    """The proof of each VIES consultation: the number asked about, our requester number, VIES' answer."""

    model = VatCheck
    fields = ("checked_at", "vat_number", "requester", "outcome", "consultation_number", "request_date", "error")
    verbose_name_plural = "VIES consultations"


class BillingDetailsInline(_ReadOnlyInline):
    model = BillingDetails
    fields = ("valid_from", "valid_to", "country", "company", "tax_id", "vat_status", "address", "postal_code", "city")
    verbose_name_plural = "billing details history"


@admin.register(BillingAccount)
class BillingAccountAdmin(AuditedModelAdmin, admin.ModelAdmin):
    list_display = ("public_id", "organization", "company", "country", "currency", "vat_status", "stripe_customer_id")
    search_fields = ("public_id", "company", "email", "tax_id", "organization__name", "organization__public_id")
    list_filter = ("vat_status", "currency", "country")
    readonly_fields = (
        "public_id",
        "organization",
        "vat_status",
        "vat_status_message",
        "vat_checked_at",
        "vat_consultation_number",
        "vat_consulted_at",
        "vat_next_check_at",
        "vat_check_failures",
        "stripe_customer_id",
        "stripe_payment_method_id",
        "stripe_synced_at",
        "created_at",
        "updated_at",
    )
    inlines = [BillingDetailsInline, VatCheckInline]


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = ("description", "quantity", "unit", "unit_price", "amount")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


class PaymentInline(admin.TabularInline):
    model = Payment
    extra = 0
    can_delete = False
    fields = ("method", "attempt", "amount", "status", "payment_intent_id", "failure_message", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


def _run(modeladmin, request, queryset, service, done: str, **kwargs):
    actor = Principal(user=request.user)
    count = 0
    for invoice in queryset:
        try:
            with transaction.atomic():
                service(invoice=invoice, actor=actor, **kwargs)
            count += 1
        except DomainError as exc:
            modeladmin.message_user(request, f"{invoice}: {exc.message}", messages.ERROR)
    if count:
        modeladmin.message_user(request, f"{count} invoice(s) {done}.", messages.SUCCESS)


class HeldFilter(admin.SimpleListFilter):
    title = "held as draft"
    parameter_name = "held"

    def lookups(self, request, model_admin):
        return [("yes", "Held (waiting for an address, a price or a rate)")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(status="draft").exclude(hold_reasons=[])
        return queryset


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    list_display = (
        "number",
        "public_id",
        "billing_account",
        "kind",
        "status",
        "total",
        "currency",
        "hold_reasons",
        "issued_at",
        "due_at",
    )
    list_filter = (HeldFilter, "status", "kind", "tax_treatment", "currency")
    search_fields = ("number", "public_id", "billing_account__company", "billing_account__organization__name")
    inlines = [InvoiceLineInline, PaymentInline]
    actions = ["mark_paid", "void", "reissue", "release_held", "issue_credit"]

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Mark paid (bank transfer)")
    def mark_paid(self, request, queryset):
        _run(self, request, queryset, services.invoice_mark_paid, "marked paid")

    @admin.action(description="Void with a credit note (credits go back, usage is released)")
    def void(self, request, queryset):
        _run(self, request, queryset, services.invoice_void, "voided", reason="Voided in the backoffice")

    @admin.action(description="Issue the corrected invoice of a voided monthly or late-usage invoice")
    def reissue(self, request, queryset):
        def corrected(*, invoice, actor):
            if invoice.kind == InvoiceKind.LATE_USAGE:
                # at once, by its month's rules: not left for the next monthly close
                services.invoice_reissue_late_usage(invoice=invoice, actor=actor)
                return
            if invoice.kind != InvoiceKind.MONTHLY or invoice.status != InvoiceStatus.VOID:
                raise Conflict(
                    "only a voided monthly or late-usage invoice is reissued; "
                    f"this is a {invoice.status} {invoice.kind}"
                )
            services.invoice_reissue(account=invoice.billing_account, month=invoice.period_start, actor=actor)

        _run(self, request, queryset, corrected, "reissued")

    @admin.action(description="Issue held drafts whose reasons are gone")
    def release_held(self, request, queryset):
        issued = []
        for account_id in set(queryset.filter(status="draft").values_list("billing_account_id", flat=True)):
            issued += invoicing.invoices_release_held(account=BillingAccount.objects.get(pk=account_id))
        self.message_user(request, f"{len(issued)} held invoice(s) issued.", messages.SUCCESS)

    @admin.action(description="Issue a refund credit of what was paid for the invoice, before VAT")
    def issue_credit(self, request, queryset):
        _run(self, request, queryset, services.invoice_refund, "credited")


@admin.register(CreditGrant)
class CreditGrantAdmin(AuditedModelAdmin, admin.ModelAdmin):
    list_display = (
        "public_id",
        "billing_account",
        "kind",
        "amount",
        "remaining",
        "currency",
        "granted_at",
        "expires_at",
    )
    list_filter = ("kind", "currency")
    search_fields = ("public_id", "billing_account__company", "billing_account__organization__name")
    raw_id_fields = ("billing_account", "coupon", "source_invoice")

    def get_readonly_fields(self, request, obj=None):
        # Once granted, only the expiry may change; the remaining balance moves with invoices alone.
        return (
            ("public_id", "remaining")
            if obj is None
            else ("public_id", "billing_account", "kind", "amount", "remaining", "currency", "coupon", "source_invoice")
        )

    def save_model(self, request, obj, form, change):
        if not change:
            obj.remaining = obj.amount
            obj.currency = obj.currency or obj.billing_account.currency
        super().save_model(request, obj, form, change)


@admin.register(Coupon)
class CouponAdmin(AuditedModelAdmin, admin.ModelAdmin):
    list_display = ("code", "amount", "currency", "valid_until", "credit_valid_days", "max_redemptions")
    search_fields = ("code",)

    def save_model(self, request, obj, form, change):
        obj.code = obj.code.strip().upper()
        super().save_model(request, obj, form, change)


@admin.register(AnnualSubscription)
class AnnualSubscriptionAdmin(admin.ModelAdmin):
    list_display = ("public_id", "deployment", "tier", "status", "term_start", "term_end", "annual_price", "auto_renew")
    list_filter = ("status", "auto_renew")
    readonly_fields = (
        "public_id",
        "billing_account",
        "deployment",
        "tier",
        "term_start",
        "term_end",
        "currency",
        "hourly_price",
        "annual_price",
        "renewed_from",
        "created_at",
    )


@admin.register(StripeEvent)
class StripeEventAdmin(admin.ModelAdmin):
    list_display = ("event_id", "type", "outcome", "received_at")
    search_fields = ("event_id", "type")

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]


class CreditNoteLineInline(_ReadOnlyInline):
    model = CreditNoteLine
    fields = ("description", "quantity", "unit", "unit_price", "amount")


@admin.register(CreditNote)
class CreditNoteAdmin(admin.ModelAdmin):
    list_display = ("number", "invoice", "billing_account", "total", "currency", "issued_at")
    search_fields = ("number", "public_id", "invoice__number", "billing_account__organization__name")
    inlines = [CreditNoteLineInline]

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class PricedFilter(admin.SimpleListFilter):
    title = "price"
    parameter_name = "priced"

    def lookups(self, request, model_admin):
        return [("no", "Unpriced (an error: add the catalog price)"), ("yes", "Priced")]

    def queryset(self, request, queryset):
        if self.value() in ("no", "yes"):
            return queryset.filter(unit_price__isnull=self.value() == "no")
        return queryset


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """Metered usage, read-only. Filter on "Unpriced" for the seconds whose currency has no price in the catalog."""

    list_display = (
        "deployment",
        "organization",
        "hour",
        "product",
        "tier",
        "seconds",
        "unit_price",
        "currency",
        "invoice",
    )
    list_filter = (PricedFilter, "product", "currency")
    search_fields = ("deployment__public_id", "organization__public_id", "organization__name")
    raw_id_fields = ("deployment", "organization", "tier", "invoice")
    date_hierarchy = "hour"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("deployment", "organization", "tier")

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ExchangeRate)
class ExchangeRateAdmin(admin.ModelAdmin):
    """Loaded by `manage.py load_exchange_rates` (and daily by beat) from the ECB's reference rates."""

    list_display = ("on", "currency", "rate", "source", "loaded_at")
    list_filter = ("currency",)
    date_hierarchy = "on"

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(TrafficAllowance)
class TrafficAllowanceAdmin(AuditedModelAdmin, admin.ModelAdmin):
    list_display = ("plan", "included_gb", "valid_from")
    list_filter = ("plan",)


@admin.register(MonthClose)
class MonthCloseAdmin(admin.ModelAdmin):
    list_display = ("period_start", "closed_at", "invoices", "held")

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request):
        return False
