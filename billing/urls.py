"""Billing API routes, mounted under /api/v1/ by controlplane.urls (the Stripe webhook is mounted at the root)."""

from django.urls import path

from billing import api

ORG = "organizations/<str:org>"
DEP = ORG + "/projects/<str:project>/deployments/<str:dep>"


def _account(method: str, name: str):
    return api.BillingAccountViewSet.as_view({method: name})


urlpatterns = [
    path(
        ORG + "/billing/account",
        api.BillingAccountViewSet.as_view({"get": "retrieve", "put": "update"}),
        name="billing-account",
    ),
    path(ORG + "/billing/overview", _account("get", "overview"), name="billing-overview"),
    path(ORG + "/billing/setup-intent", _account("post", "setup_intent"), name="billing-setup-intent"),
    path(ORG + "/billing/checkout-session", _account("post", "checkout_session"), name="billing-checkout-session"),
    path(ORG + "/billing/credits", _account("get", "credits"), name="billing-credits"),
    path(ORG + "/billing/coupons/redeem", _account("post", "redeem_coupon"), name="billing-coupon-redeem"),
    path(ORG + "/invoices", api.InvoiceViewSet.as_view({"get": "list"}), name="invoice-list"),
    path(ORG + "/invoices/<str:inv>", api.InvoiceViewSet.as_view({"get": "retrieve"}), name="invoice-detail"),
    path(ORG + "/invoices/<str:inv>/pdf", api.InvoiceViewSet.as_view({"get": "pdf"}), name="invoice-pdf"),
    path(ORG + "/invoices/<str:inv>/html", api.InvoiceViewSet.as_view({"get": "html"}), name="invoice-html"),
    path(ORG + "/credit-notes", api.CreditNoteViewSet.as_view({"get": "list"}), name="credit-note-list"),
    path(
        ORG + "/credit-notes/<str:crn>", api.CreditNoteViewSet.as_view({"get": "retrieve"}), name="credit-note-detail"
    ),
    path(ORG + "/credit-notes/<str:crn>/pdf", api.CreditNoteViewSet.as_view({"get": "pdf"}), name="credit-note-pdf"),
    path(ORG + "/credit-notes/<str:crn>/html", api.CreditNoteViewSet.as_view({"get": "html"}), name="credit-note-html"),
    path(ORG + "/subscriptions", api.SubscriptionViewSet.as_view({"get": "list"}), name="subscription-list"),
    path(DEP + "/annual-quotes", api.AnnualQuoteViewSet.as_view({"post": "create"}), name="annual-quote-list"),
    path(
        DEP + "/annual-quotes/<str:quote>",
        api.AnnualQuoteViewSet.as_view({"get": "retrieve"}),
        name="annual-quote-detail",
    ),
    path(
        DEP + "/annual-quotes/<str:quote>/accept",
        api.AnnualQuoteViewSet.as_view({"post": "accept"}),
        name="annual-quote-accept",
    ),
]
