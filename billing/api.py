"""REST API for billing: the billing account, overview, card setup, credits and coupons, invoices and credit notes
(JSON, HTML, PDF), subscriptions, annual quotes; and the Stripe webhook endpoint. Thin: parse, call one service,
serialize.

Amounts are integers in minor units of `currency` (cents for USD and EUR); prices finer than that are decimal
strings in major units.
"""

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_serializer
from rest_framework import exceptions, mixins, serializers, status
from rest_framework.response import Response

from billing import annual, documents, invoicing, selectors, services
from billing import stripe_gateway as gateway
from billing.models import (
    AnnualQuote,
    AnnualSubscription,
    BillingAccount,
    CreditGrant,
    CreditNote,
    Invoice,
    InvoiceStatus,
    missing_address_fields,
)
from controlplane.api.pagination import CursorPagination
from controlplane.api.problems import problem_response
from controlplane.api.serializers import InputSerializer, PlainTextField, StrictCharField
from controlplane.api.views import ScopedViewSet
from controlplane.errors import Conflict
from deployments.models import Deployment

BILLING_TAG = ["billing"]
INVOICES_TAG = ["invoices"]
ANNUAL_TAG = ["annual plans"]


# --- Serializers ------------------------------------------------------------------------------------------------


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Billing account",
            value={
                "id": "bac_k2m9q4x8c1v5b6n0z7f3",
                "country": "FR",
                "company": "Exemple SAS",
                "email": "compta@exemple.fr",
                "address": "1 rue de Rivoli",
                "city": "Paris",
                "state": "",
                "postal_code": "75001",
                "tax_id": "FR40303265045",
                "currency": "EUR",
                "vat_status": "valid",
                "vat_status_message": "Confirmed by VIES.",
                "vat_checked_at": "2026-11-02T10:00:05Z",
                "vat_consultation_number": "WAPIAAAAZ8k3Lx1N",
                "vat_consulted_at": "2026-11-02T10:00:05Z",
                "missing_details": [],
                "tax_treatment": "reverse_charge",
                "tax_rate": "0",
                "card_on_file": True,
                "updated_at": "2026-11-02T10:00:00Z",
            },
            response_only=True,
        )
    ]
)
class BillingAccountOutputSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    tax_treatment = serializers.SerializerMethodField()
    tax_rate = serializers.SerializerMethodField()
    card_on_file = serializers.SerializerMethodField()
    missing_details = serializers.SerializerMethodField(
        help_text="Parts of the full address an invoice needs that are missing (street as `address`, "
        "`postal_code`, `city`, `country`); while any is, the month's invoice waits as a draft."
    )

    class Meta:
        model = BillingAccount
        fields = [
            "id",
            "country",
            "company",
            "email",
            "address",
            "city",
            "state",
            "postal_code",
            "tax_id",
            "currency",
            "vat_status",
            "vat_status_message",
            "vat_checked_at",
            "vat_consultation_number",
            "vat_consulted_at",
            "missing_details",
            "tax_treatment",
            "tax_rate",
            "card_on_file",
            "updated_at",
        ]

    def _decision(self, obj):
        if not hasattr(obj, "_decision"):
            obj._decision = invoicing.tax_decision(obj, timezone.now().date())
        return obj._decision

    def get_tax_treatment(self, obj) -> str:
        return self._decision(obj).treatment.value

    def get_tax_rate(self, obj) -> str:
        return f"{self._decision(obj).rate.normalize():f}"

    def get_card_on_file(self, obj) -> bool:
        return bool(obj.stripe_payment_method_id)

    def get_missing_details(self, obj) -> list[str]:
        return missing_address_fields(obj)


class BillingAccountInputSerializer(InputSerializer):
    country = StrictCharField(max_length=2, min_length=2, help_text="ISO 3166-1 alpha-2, e.g. DE.")
    company = PlainTextField(
        max_length=200,
        required=False,
        default="",
        allow_blank=True,
        help_text="Company name; leave empty for a private person.",
    )
    email = serializers.EmailField(max_length=254)
    address = PlainTextField(
        max_length=200, required=False, default="", allow_blank=True, help_text="Street and number; required."
    )
    city = PlainTextField(max_length=100, required=False, default="", allow_blank=True, help_text="Required.")
    state = PlainTextField(max_length=100, required=False, default="", allow_blank=True)
    postal_code = PlainTextField(max_length=20, required=False, default="", allow_blank=True)
    tax_id = PlainTextField(
        max_length=40, required=False, default="", allow_blank=True, help_text="VAT or GST number (EIN in the US)."
    )
    currency = StrictCharField(max_length=3, required=False, help_text="ISO 4217; USD or EUR.")


class LateUsageInvoiceOutputSerializer(serializers.Serializer):
    month = serializers.DateField(help_text="The month the late usage belongs to (the invoice's supply period).")
    subtotal = serializers.IntegerField(help_text="Its part of month_to_date, before credits and tax.")
    tax_treatment = serializers.CharField(help_text="That month's treatment, which the invoice will carry.")
    tax_rate = serializers.DecimalField(max_digits=5, decimal_places=2, help_text="That month's VAT rate, in %.")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Overview",
            value={
                "currency": "USD",
                "month_start": "2026-11-01",
                "month_to_date": 14304,
                "forecast": 25920,
                "credit_balance": 1000,
                "open_invoices": 1,
                "open_amount": 268056,
                "held_invoices": 0,
                "missing_details": [],
                "late_usage_invoices": [
                    {"month": "2026-10-01", "subtotal": 72, "tax_treatment": "eu_consumer", "tax_rate": "20.00"}
                ],
            },
            response_only=True,
        )
    ]
)
class BillingOverviewOutputSerializer(serializers.Serializer):
    currency = serializers.CharField()
    month_start = serializers.DateField()
    month_to_date = serializers.IntegerField(
        help_text="The subtotal so far of what this month's close will invoice (its lines, late usage included, "
        "also the late usage in late_usage_invoices), before credits and tax."
    )
    forecast = serializers.IntegerField(help_text="The same lines with this month's quantities extended to its end.")
    credit_balance = serializers.IntegerField()
    open_invoices = serializers.IntegerField()
    open_amount = serializers.IntegerField()
    held_invoices = serializers.IntegerField(help_text="Invoices waiting as drafts (see their `hold_reasons`).")
    missing_details = serializers.ListField(
        child=serializers.CharField(), help_text="Address parts missing; invoices wait until they are given."
    )
    late_usage_invoices = LateUsageInvoiceOutputSerializer(
        many=True,
        help_text="Late usage of earlier months taxed otherwise than this month: the close bills it on a late-usage "
        "invoice of its own month, by that month's tax (part of month_to_date and forecast, not of the monthly "
        "invoice).",
    )


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Setup intent",
            value={"setup_intent": "seti_1Nq...", "client_secret": "seti_1Nq..._secret_..."},
            response_only=True,
        )
    ]
)
class SetupIntentOutputSerializer(serializers.Serializer):
    setup_intent = serializers.CharField()
    client_secret = serializers.CharField(help_text="Give it to Stripe.js to collect the card.")


class CheckoutSessionInputSerializer(InputSerializer):
    success_url = serializers.URLField(max_length=500)
    cancel_url = serializers.URLField(max_length=500)


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Checkout session", value={"url": "https://checkout.stripe.com/c/pay/cs_test_..."}, response_only=True
        )
    ]
)
class CheckoutSessionOutputSerializer(serializers.Serializer):
    url = serializers.URLField(help_text="Send the user there to save a card (Checkout in setup mode).")


class CouponRedeemInputSerializer(InputSerializer):
    code = StrictCharField(max_length=40)


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Credit",
            value={
                "id": "crd_k2m9q4x8c1v5b6n0z7f3",
                "kind": "coupon",
                "description": "Coupon WELCOME10",
                "currency": "USD",
                "amount": 1000,
                "remaining": 1000,
                "granted_at": "2026-11-02T10:00:00Z",
                "expires_at": "2027-02-02T10:00:00Z",
            },
            response_only=True,
        )
    ]
)
class CreditGrantOutputSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)

    class Meta:
        model = CreditGrant
        fields = ["id", "kind", "description", "currency", "amount", "remaining", "granted_at", "expires_at"]


class InvoiceLineOutputSerializer(serializers.Serializer):
    deployment = serializers.CharField(source="deployment.public_id", allow_null=True, default=None)
    product = serializers.CharField(help_text="running, retention, traffic, annual or annual_upgrade.")
    description = serializers.CharField()
    quantity = serializers.DecimalField(max_digits=18, decimal_places=6)
    unit = serializers.CharField(
        help_text="hour, year, item or, for traffic, GiB (1024³ bytes; traffic lines issued before this spelling "
        "say GB for the same GiB)."
    )
    unit_price = serializers.DecimalField(max_digits=20, decimal_places=6)  # as the model: a year in VND is 9 digits
    amount = serializers.IntegerField()
    tier = serializers.CharField(source="tier.code", allow_null=True, default=None)
    usage_month = serializers.DateField(
        allow_null=True, help_text="The month the usage belongs to; before the period: late usage."
    )
    bytes = serializers.IntegerField(allow_null=True, help_text="Traffic lines: bytes in plus out.")


INVOICE_EXAMPLE = {
    "id": "inv_k2m9q4x8c1v5b6n0z7f3",
    "number": "MQC-2026-000042",
    "kind": "monthly",
    "status": "open",
    "currency": "USD",
    "period_start": "2026-10-01",
    "period_end": "2026-10-31",
    "subtotal": 9072,
    "credits_applied": 0,
    "tax_treatment": "outside_scope",
    "tax_rate": "0.00",
    "tax_mention": "",
    "tax": 0,
    "total": 9072,
    "hold_reasons": [],
    "notes": [],
    "vat_currency": "",
    "vat_exchange_rate": None,
    "vat_exchange_rate_date": None,
    "tax_in_vat_currency": None,
    "credit_note": None,
    "issued_at": "2026-11-01T00:05:00Z",
    "due_at": "2026-11-15T00:05:00Z",
    "paid_at": None,
    "customer": {
        "name": "Acme Inc.",
        "address_lines": ["1 Main St", "94105 San Francisco", "CA", "US"],
        "vat_number": None,
    },
    "lines": [
        {
            "deployment": "dep_7f3k2m9q4x8c1v5b6n0z",
            "product": "running",
            "description": "prod (dep_7f3k2m9q4x8c1v5b6n0z), Dedicated 1k, running",
            "quantity": "244.000000",
            "unit": "hour",
            "unit_price": "0.360000",
            "amount": 8784,
            "tier": "1k",
            "usage_month": "2026-10-01",
            "bytes": None,
        }
    ],
}


@extend_schema_serializer(examples=[OpenApiExample("Invoice", value=INVOICE_EXAMPLE, response_only=True)])
class InvoiceOutputSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    lines = InvoiceLineOutputSerializer(many=True, read_only=True)
    hold_reasons = serializers.ListField(
        child=serializers.CharField(),
        help_text="A draft waits for: address_incomplete, unpriced_usage, exchange_rate_missing. Empty once issued.",
    )
    notes = serializers.ListField(child=serializers.CharField())
    credit_note = serializers.SerializerMethodField(help_text="The credit note that cancelled it (`crn_…`), if any.")

    class Meta:
        model = Invoice
        fields = [
            "id",
            "number",
            "kind",
            "status",
            "currency",
            "period_start",
            "period_end",
            "subtotal",
            "credits_applied",
            "tax_treatment",
            "tax_rate",
            "tax_mention",
            "tax",
            "total",
            "hold_reasons",
            "notes",
            "vat_currency",
            "vat_exchange_rate",
            "vat_exchange_rate_date",
            "tax_in_vat_currency",
            "credit_note",
            "issued_at",
            "due_at",
            "paid_at",
            "customer",
            "lines",
        ]

    def get_credit_note(self, obj) -> str | None:
        note = getattr(obj, "credit_note", None)
        return note.public_id if note is not None else None


class CreditNoteLineOutputSerializer(serializers.Serializer):
    deployment = serializers.CharField(source="deployment.public_id", allow_null=True, default=None)
    product = serializers.CharField()
    description = serializers.CharField()
    quantity = serializers.DecimalField(max_digits=18, decimal_places=6)
    unit = serializers.CharField()
    unit_price = serializers.DecimalField(max_digits=20, decimal_places=6)  # as the model: a year in VND is 9 digits
    amount = serializers.IntegerField(help_text="Minor units, negative.")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Credit note",
            value={
                "id": "crn_k2m9q4x8c1v5b6n0z7f3",
                "number": "MQC-CN-2026-000003",
                "invoice": "inv_k2m9q4x8c1v5b6n0z7f3",
                "invoice_number": "MQC-2026-000042",
                "currency": "USD",
                "subtotal": -9072,
                "credits_applied": 0,
                "tax": 0,
                "total": -9072,
                "tax_treatment": "outside_scope",
                "tax_rate": "0.00",
                "reason": "Wrong tier billed",
                "issued_at": "2026-11-03T09:00:00Z",
                "lines": [],
            },
            response_only=True,
        )
    ]
)
class CreditNoteOutputSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    invoice = serializers.CharField(source="invoice.public_id", read_only=True)
    invoice_number = serializers.CharField(source="invoice.number", read_only=True)
    lines = CreditNoteLineOutputSerializer(many=True, read_only=True)

    class Meta:
        model = CreditNote
        fields = [
            "id",
            "number",
            "invoice",
            "invoice_number",
            "currency",
            "subtotal",
            "credits_applied",
            "tax",
            "total",
            "tax_treatment",
            "tax_rate",
            "reason",
            "issued_at",
            "lines",
        ]


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Subscription",
            value={
                "id": "sub_k2m9q4x8c1v5b6n0z7f3",
                "deployment": "dep_7f3k2m9q4x8c1v5b6n0z",
                "plan": "dedicated",
                "tier": "1k",
                "status": "active",
                "term_start": "2026-11-17T13:20:00Z",
                "term_end": "2027-11-17T13:20:00Z",
                "currency": "USD",
                "annual_price": 268056,
                "auto_renew": False,
            },
            response_only=True,
        )
    ]
)
class SubscriptionOutputSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    deployment = serializers.CharField(source="deployment.public_id", read_only=True)
    plan = serializers.CharField(source="tier.plan.code", read_only=True)
    tier = serializers.CharField(source="tier.code", read_only=True)

    class Meta:
        model = AnnualSubscription
        fields = [
            "id",
            "deployment",
            "plan",
            "tier",
            "status",
            "term_start",
            "term_end",
            "currency",
            "annual_price",
            "auto_renew",
        ]


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Annual quote",
            value={
                "id": "quo_k2m9q4x8c1v5b6n0z7f3",
                "deployment": "dep_7f3k2m9q4x8c1v5b6n0z",
                "tier": "1k",
                "currency": "USD",
                "hourly_price": "0.360000",
                "annual_price": 268056,
                "hourly_equivalent": 315360,
                "saving": 47304,
                "tax_treatment": "outside_scope",
                "tax_rate": "0.00",
                "tax": 0,
                "total": 268056,
                "accrued_this_month": 14304,
                "term_start": "2026-11-17T13:20:00Z",
                "term_end": "2027-11-17T13:20:00Z",
                "expires_at": "2026-11-24T13:20:00Z",
                "accepted_at": None,
                "subscription": None,
            },
            response_only=True,
        )
    ]
)
class AnnualQuoteOutputSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    deployment = serializers.CharField(source="deployment.public_id", read_only=True)
    tier = serializers.CharField(source="tier.code", read_only=True)
    subscription = serializers.CharField(source="subscription.public_id", read_only=True, allow_null=True, default=None)
    term_start = serializers.DateTimeField(
        help_text="The term starts when the quote is accepted; these are the dates if accepted when quoted."
    )

    class Meta:
        model = AnnualQuote
        fields = [
            "id",
            "deployment",
            "tier",
            "currency",
            "hourly_price",
            "annual_price",
            "hourly_equivalent",
            "saving",
            "tax_treatment",
            "tax_rate",
            "tax",
            "total",
            "accrued_this_month",
            "term_start",
            "term_end",
            "expires_at",
            "accepted_at",
            "subscription",
        ]


class AnnualQuoteCreateInputSerializer(InputSerializer):
    pass


class AnnualQuoteAcceptInputSerializer(InputSerializer):
    auto_renew = serializers.BooleanField(
        required=False, default=False, help_text="Renew for another year at the end of the term."
    )


# --- Views ---------------------------------------------------------------------------------------------------------


class BillingAccountViewSet(ScopedViewSet):
    """The organization's billing account and what hangs off it (overview, card, credits, coupons)."""

    queryset = BillingAccount.objects.all()
    serializer_class = BillingAccountOutputSerializer
    required_scopes = {
        "retrieve": "billing:read",
        "update": "billing:write",
        "overview": "billing:read",
        "setup_intent": "billing:write",
        "checkout_session": "billing:write",
        "credits": "billing:read",
        "redeem_coupon": "billing:write",
    }
    # Operations that wait on Stripe: while it is down they answer 503 (documented in the schema).
    outside_service_actions = frozenset({"setup_intent", "checkout_session"})

    def account(self) -> BillingAccount:
        account = selectors.billing_account_for(organization=self.organization)
        account.organization = self.organization
        return account

    @extend_schema(
        summary="Describe the billing account", tags=BILLING_TAG, responses={200: BillingAccountOutputSerializer}
    )
    def retrieve(self, request, *args, **kwargs):
        return Response(BillingAccountOutputSerializer(self.account()).data)

    @extend_schema(
        summary="Replace the billing details (address, VAT number, currency)",
        tags=BILLING_TAG,
        request=BillingAccountInputSerializer,
        responses={200: BillingAccountOutputSerializer},
    )
    def update(self, request, *args, **kwargs):
        data = BillingAccountInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        account = services.billing_account_update(account=self.account(), actor=self.principal, **data.validated_data)
        return Response(BillingAccountOutputSerializer(account).data)

    @extend_schema(
        summary="Month-to-date spend, forecast, credit balance and open invoices",
        tags=BILLING_TAG,
        responses={200: BillingOverviewOutputSerializer},
    )
    def overview(self, request, *args, **kwargs):
        overview = selectors.billing_overview(account=self.account())
        return Response(BillingOverviewOutputSerializer(overview).data)

    @extend_schema(
        summary="Start saving a card with Stripe.js (SetupIntent)",
        tags=BILLING_TAG,
        request=None,
        responses={201: SetupIntentOutputSerializer},
    )
    def setup_intent(self, request, *args, **kwargs):
        intent_id, secret = services.card_setup_intent_create(account=self.account(), actor=self.principal)
        return Response(
            SetupIntentOutputSerializer({"setup_intent": intent_id, "client_secret": secret}).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(
        summary="Save a card on a Stripe-hosted page (Checkout in setup mode)",
        tags=BILLING_TAG,
        request=CheckoutSessionInputSerializer,
        responses={201: CheckoutSessionOutputSerializer},
    )
    def checkout_session(self, request, *args, **kwargs):
        data = CheckoutSessionInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        url = services.card_checkout_session_create(account=self.account(), actor=self.principal, **data.validated_data)
        return Response(CheckoutSessionOutputSerializer({"url": url}).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="List credits (promotion, coupon, refund, prepaid)",
        tags=BILLING_TAG,
        responses={200: CreditGrantOutputSerializer(many=True)},
    )
    def credits(self, request, *args, **kwargs):
        paginator = CreditPagination()
        page = paginator.paginate_queryset(selectors.credit_list(account=self.account()), request, view=self)
        return paginator.get_paginated_response(CreditGrantOutputSerializer(page, many=True).data)

    @extend_schema(
        summary="Redeem a coupon code as a credit",
        tags=BILLING_TAG,
        request=CouponRedeemInputSerializer,
        responses={201: CreditGrantOutputSerializer},
    )
    def redeem_coupon(self, request, *args, **kwargs):
        data = CouponRedeemInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        grant = services.coupon_redeem(account=self.account(), actor=self.principal, code=data.validated_data["code"])
        return Response(CreditGrantOutputSerializer(grant).data, status=status.HTTP_201_CREATED)


class CreditPagination(CursorPagination):
    ordering = ("-granted_at", "-id")


class InvoiceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    """Invoices, held drafts included (with their `hold_reasons`): a draft has no number and no document yet."""

    queryset = Invoice.objects.select_related("credit_note").prefetch_related("lines__deployment", "lines__tier")
    tenant_field = "billing_account__organization"
    lookup_url_kwarg = "inv"
    serializer_class = InvoiceOutputSerializer
    required_scopes = {
        "list": "billing:read",
        "retrieve": "billing:read",
        "pdf": "billing:read",
        "html": "billing:read",
    }

    @extend_schema(summary="List invoices", tags=INVOICES_TAG)
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe an invoice with its lines", tags=INVOICES_TAG)
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    def perform_content_negotiation(self, request, force=False):
        # The documents are served whatever Accept says (a browser or `Accept: application/pdf` alike); errors stay
        # problem+json, which is why no PDF or HTML renderer is registered.
        return super().perform_content_negotiation(request, force=force or self.action in ("pdf", "html"))

    @extend_schema(
        summary="Download an invoice as PDF",
        tags=INVOICES_TAG,
        responses={
            (200, "application/pdf"): OpenApiResponse(
                OpenApiTypes.BINARY,
                description="The PDF",
                examples=[OpenApiExample("PDF", value="%PDF-1.4 …", media_type="application/pdf")],
            )
        },
    )
    def pdf(self, request, *args, **kwargs):
        invoice = self.issued()
        response = HttpResponse(documents.invoice_pdf(invoice), content_type="application/pdf")
        response["Content-Disposition"] = f'inline; filename="{invoice.number}.pdf"'
        return response

    @extend_schema(
        summary="View an invoice as an HTML page",
        tags=INVOICES_TAG,
        responses={
            (200, "text/html"): OpenApiResponse(
                OpenApiTypes.STR,
                description="The page",
                examples=[
                    OpenApiExample(
                        "Page", value="<!doctype html><html>… Invoice MQ-2026-000042 …</html>", media_type="text/html"
                    )
                ],
            )
        },
    )
    def html(self, request, *args, **kwargs):
        return HttpResponse(documents.invoice_html(self.issued()), content_type="text/html; charset=utf-8")

    def issued(self) -> Invoice:
        invoice = self.get_object()
        if invoice.status == InvoiceStatus.DRAFT:
            reasons = ", ".join(invoice.hold_reasons) or "not issued yet"
            raise Conflict(f"This invoice is a draft ({reasons}): it has no document until it is issued.")
        return invoice


class CreditNotePagination(CursorPagination):
    ordering = ("-issued_at", "-id")


class CreditNoteViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    """Credit notes: each cancels one issued invoice, with the amounts negated."""

    queryset = CreditNote.objects.select_related("invoice").prefetch_related("lines__deployment")
    tenant_field = "billing_account__organization"
    lookup_url_kwarg = "crn"
    serializer_class = CreditNoteOutputSerializer
    pagination_class = CreditNotePagination
    required_scopes = {
        "list": "billing:read",
        "retrieve": "billing:read",
        "pdf": "billing:read",
        "html": "billing:read",
    }

    @extend_schema(summary="List credit notes", tags=INVOICES_TAG)
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe a credit note with its lines", tags=INVOICES_TAG)
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    def perform_content_negotiation(self, request, force=False):
        return super().perform_content_negotiation(request, force=force or self.action in ("pdf", "html"))

    @extend_schema(
        summary="Download a credit note as PDF",
        tags=INVOICES_TAG,
        responses={
            (200, "application/pdf"): OpenApiResponse(
                OpenApiTypes.BINARY,
                description="The PDF",
                examples=[OpenApiExample("PDF", value="%PDF-1.4 …", media_type="application/pdf")],
            )
        },
    )
    def pdf(self, request, *args, **kwargs):
        note = self.get_object()
        response = HttpResponse(documents.credit_note_pdf(note), content_type="application/pdf")
        response["Content-Disposition"] = f'inline; filename="{note.number}.pdf"'
        return response

    @extend_schema(
        summary="View a credit note as an HTML page",
        tags=INVOICES_TAG,
        responses={
            (200, "text/html"): OpenApiResponse(
                OpenApiTypes.STR,
                description="The page",
                examples=[
                    OpenApiExample(
                        "Page",
                        value="<!doctype html><html>… Credit note MQC-CN-2026-000003 …</html>",
                        media_type="text/html",
                    )
                ],
            )
        },
    )
    def html(self, request, *args, **kwargs):
        return HttpResponse(documents.credit_note_html(self.get_object()), content_type="text/html; charset=utf-8")


class SubscriptionViewSet(mixins.ListModelMixin, ScopedViewSet):
    queryset = AnnualSubscription.objects.select_related("deployment", "tier__plan")
    tenant_field = "billing_account__organization"
    serializer_class = SubscriptionOutputSerializer
    required_scopes = {"list": "billing:read"}

    @extend_schema(summary="List annual subscriptions", tags=ANNUAL_TAG)
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)


class AnnualQuoteViewSet(mixins.RetrieveModelMixin, ScopedViewSet):
    """Quotes to switch one deployment from hourly billing to an annual plan; checked on the project."""

    queryset = AnnualQuote.objects.select_related("deployment", "tier", "subscription")
    tenant_field = "deployment__project"
    scope_level = "project"
    lookup_url_kwarg = "quote"
    serializer_class = AnnualQuoteOutputSerializer
    required_scopes = {"create": "deployment:annual", "retrieve": "deployment:annual", "accept": "deployment:annual"}

    def narrow_queryset(self, queryset):
        return queryset.filter(deployment__public_id=self.kwargs["dep"])

    def deployment(self) -> Deployment:
        found = Deployment.objects.filter(
            project=self.project, public_id=self.kwargs["dep"], deleted_at__isnull=True
        ).first()
        if found is None:
            raise exceptions.NotFound("No such deployment.")
        found.project = self.project
        return found

    @extend_schema(
        summary="Quote a switch to an annual plan",
        tags=ANNUAL_TAG,
        request=AnnualQuoteCreateInputSerializer,
        responses={201: AnnualQuoteOutputSerializer},
    )
    def create(self, request, *args, **kwargs):
        AnnualQuoteCreateInputSerializer(data=request.data or {}).is_valid(raise_exception=True)
        quote = annual.annual_quote_create(deployment=self.deployment(), actor=self.principal)
        return Response(AnnualQuoteOutputSerializer(quote).data, status=status.HTTP_201_CREATED)

    @extend_schema(summary="Describe an annual quote", tags=ANNUAL_TAG)
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        summary="Accept a quote: the annual plan starts now and its invoice is issued",
        tags=ANNUAL_TAG,
        request=AnnualQuoteAcceptInputSerializer,
        responses={201: SubscriptionOutputSerializer},
    )
    def accept(self, request, *args, **kwargs):
        data = AnnualQuoteAcceptInputSerializer(data=request.data or {})
        data.is_valid(raise_exception=True)
        subscription = annual.annual_quote_accept(
            quote=self.get_object(), actor=self.principal, auto_renew=data.validated_data["auto_renew"]
        )
        return Response(SubscriptionOutputSerializer(subscription).data, status=status.HTTP_201_CREATED)


# --- Stripe webhook ------------------------------------------------------------------------------------------------


@csrf_exempt
@require_POST
def stripe_webhook(request):
    """Stripe's events, verified with STRIPE_WEBHOOK_SECRET. Each event id is applied once; a replay answers 200 and
    changes nothing (Stripe retries anything else)."""
    if not settings.STRIPE_WEBHOOK_SECRET:
        return problem_response(503, detail="Stripe webhooks are not configured on this installation.")
    try:
        first, outcome = services.stripe_event_process(
            payload=request.body, signature=request.headers.get("Stripe-Signature", "")
        )
    except gateway.WebhookSignatureError as exc:
        return problem_response(400, detail=str(exc), code="invalid-signature")
    except gateway.WebhookPayloadError as exc:
        return problem_response(400, detail=str(exc), code="invalid-payload")
    return JsonResponse({"received": True, "duplicate": not first, "outcome": outcome})
