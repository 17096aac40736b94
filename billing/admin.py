"""Backoffice for billing: accounts, invoices (void, mark paid, issue a refund credit), credits and coupons.

Invoices are read-only here: every change goes through billing.services, so it is audited and reconciles.
Prices live in the deployments catalog admin.
"""

from django.contrib import admin, messages
from django.db import transaction

from audit.admin_mixins import AuditedModelAdmin
from billing import services
from billing.models import (
    AnnualSubscription,
    BillingAccount,
    Coupon,
    CreditGrant,
    Invoice,
    InvoiceLine,
    Payment,
    StripeEvent,
)
from controlplane.api.problems import Conflict
from organizations.access import Principal


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
        "stripe_customer_id",
        "stripe_payment_method_id",
        "stripe_synced_at",
        "created_at",
        "updated_at",
    )


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
        except Conflict as exc:
            modeladmin.message_user(request, f"{invoice}: {exc.detail}", messages.ERROR)
    if count:
        modeladmin.message_user(request, f"{count} invoice(s) {done}.", messages.SUCCESS)


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
        "issued_at",
        "due_at",
    )
    list_filter = ("status", "kind", "tax_treatment", "currency")
    search_fields = ("number", "public_id", "billing_account__company", "billing_account__organization__name")
    inlines = [InvoiceLineInline, PaymentInline]
    actions = ["mark_paid", "void", "issue_credit"]

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Mark paid (bank transfer)")
    def mark_paid(self, request, queryset):
        _run(self, request, queryset, services.invoice_mark_paid, "marked paid")

    @admin.action(description="Void (credits consumed go back)")
    def void(self, request, queryset):
        _run(self, request, queryset, services.invoice_void, "voided")

    @admin.action(description="Issue a refund credit of the invoice total")
    def issue_credit(self, request, queryset):
        def refund(*, invoice, actor):
            if invoice.total <= 0 or invoice.status not in ("paid", "open"):
                raise Conflict(f"a {invoice.status} invoice of {invoice.total} cannot be credited")
            services.credit_grant(
                account=invoice.billing_account,
                actor=actor,
                kind="refund",
                amount=invoice.total,
                description=f"Refund of invoice {invoice.number}",
                source_invoice=invoice,
            )

        _run(self, request, queryset, refund, "credited")


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
