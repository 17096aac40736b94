"""Backoffice for the catalog (regions, plans, tiers, prices) and a read-mostly view of deployments and operations.

Every change made here is audited (AuditedModelAdmin). Observed state is the reconciler's: shown, never editable.
"""

from django import forms
from django.contrib import admin, messages
from django.utils import timezone

from audit.admin_mixins import AuditedModelAdmin
from controlplane import crypto
from controlplane.errors import DomainError
from deployments import services
from deployments.models import (
    AclRule,
    CertificateAuthority,
    Deployment,
    DeploymentEvent,
    MaintenanceWindow,
    MqttUser,
    Operation,
    Plan,
    Price,
    RateLimitPolicy,
    Region,
    StatusInterval,
    Tier,
    TlsCertificate,
)


class RegionForm(forms.ModelForm):
    kubeconfig = forms.CharField(
        widget=forms.Textarea,
        required=False,
        help_text="Paste a kubeconfig to replace the stored one (kept encrypted); leave empty to keep it.",
    )

    class Meta:
        model = Region
        exclude = ["kubeconfig_encrypted"]  # noqa: DJ006 - every field but the secret, which has its own form field

    def save(self, commit=True):
        region = super().save(commit=False)
        if self.cleaned_data.get("kubeconfig"):
            region.kubeconfig_encrypted = crypto.encrypt_str(self.cleaned_data["kubeconfig"])
        if commit:
            region.save()
            self.save_m2m()
        return region


@admin.register(Region)
class RegionAdmin(AuditedModelAdmin, admin.ModelAdmin):
    form = RegionForm
    list_display = ("code", "display_name", "provider", "cloud_region", "driver", "is_open")
    list_filter = ("driver", "provider", "is_open")
    search_fields = ("code", "display_name")
    filter_horizontal = ("tiers",)


class TierInline(admin.TabularInline):
    model = Tier
    extra = 0


@admin.register(Plan)
class PlanAdmin(AuditedModelAdmin, admin.ModelAdmin):
    list_display = ("code", "name", "sort_order")
    inlines = [TierInline]


@admin.register(Price)
class PriceAdmin(AuditedModelAdmin, admin.ModelAdmin):
    list_display = ("plan", "tier", "kind", "currency", "amount", "valid_from")
    list_filter = ("plan", "kind", "currency")


class OperationInline(admin.TabularInline):
    model = Operation
    extra = 0
    can_delete = False
    fields = ("public_id", "kind", "status", "target_generation", "error", "created_at", "finished_at")
    readonly_fields = fields


@admin.register(Deployment)
class DeploymentAdmin(AuditedModelAdmin, admin.ModelAdmin):
    list_display = ("name", "public_id", "project", "plan", "tier", "region", "desired_state", "status", "created_at")
    list_filter = ("status", "desired_state", "plan", "region")
    search_fields = ("name", "public_id", "project__public_id", "project__organization__public_id")
    raw_id_fields = ("project",)
    readonly_fields = (
        "public_id",
        "status",
        "conditions",
        "observed_generation",
        "observed_restart_nonce",
        "endpoints",
        "observed_details",
        "last_error",
        "last_reconciled_at",
        "generation",
        "restart_nonce",
        "created_at",
        "updated_at",
        "deleted_at",
    )
    exclude = ("monitor_password_encrypted", "monitor_salt_b64", "monitor_hash_b64", "api_secret_encrypted")
    inlines = [OperationInline]


class MaintenanceWindowForm(forms.ModelForm):
    class Meta:
        model = MaintenanceWindow
        fields = ["deployment", "starts_at", "ends_at", "emergency", "reason"]
        widgets = {"reason": forms.Textarea(attrs={"rows": 3})}

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            data["reason"] = services.maintenance_validate(
                deployment=data["deployment"],
                starts_at=data["starts_at"],
                ends_at=data["ends_at"],
                reason=data["reason"],
                emergency=data.get("emergency", False),
                now=timezone.now(),
            )
        except DomainError as exc:
            if not exc.errors:
                self.add_error(None, exc.message)
            for error in exc.errors:
                self.add_error(error.field if error.field in self.fields else None, error.message)
        return data


@admin.register(MaintenanceWindow)
class MaintenanceWindowAdmin(AuditedModelAdmin, admin.ModelAdmin):
    """Scheduling goes through deployments.services (lead time, overlaps, the organization's notification, the
    audit entry); a window is never edited afterwards, only cancelled."""

    form = MaintenanceWindowForm
    list_display = ("public_id", "deployment", "starts_at", "ends_at", "emergency", "status", "created_by")
    list_filter = ("status", "emergency", "deployment__region")
    search_fields = ("public_id", "deployment__public_id", "deployment__name", "reason")
    raw_id_fields = ("deployment",)
    actions = ["cancel_windows"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return (
            "public_id",
            "deployment",
            "starts_at",
            "ends_at",
            "emergency",
            "reason",
            "status",
            "operation",
            "created_by",
            "created_at",
            "cancelled_at",
        )

    def get_fields(self, request, obj=None):
        return self.get_readonly_fields(request, obj) or self.form.Meta.fields

    def has_delete_permission(self, request, obj=None):
        return False  # customers were told: a window is cancelled (and they are told again), never erased

    def save_model(self, request, obj, form, change):
        if change:
            return
        window = services.maintenance_schedule(
            deployment=obj.deployment,
            starts_at=obj.starts_at,
            ends_at=obj.ends_at,
            reason=obj.reason,
            emergency=obj.emergency,
            actor=self._actor(request),
        )
        for field in MaintenanceWindow._meta.concrete_fields:
            setattr(obj, field.attname, getattr(window, field.attname))
        obj._state.adding = False

    @admin.action(description="Cancel the selected windows (notifies the organizations)")
    def cancel_windows(self, request, queryset):
        cancelled = 0
        for window in queryset:
            try:
                services.maintenance_cancel(window=window, actor=self._actor(request))
                cancelled += 1
            except DomainError as exc:
                self.message_user(request, f"{window.public_id}: {exc.message}", messages.WARNING)
        self.message_user(request, f"{cancelled} maintenance window(s) cancelled.")


@admin.register(StatusInterval)
class StatusIntervalAdmin(admin.ModelAdmin):
    list_display = ("deployment", "status", "tier", "started_at", "ended_at")
    list_filter = ("status",)
    raw_id_fields = ("deployment",)

    def has_change_permission(self, request, obj=None):
        return False  # billing meters from these rows


admin.site.register([DeploymentEvent, MqttUser, AclRule, RateLimitPolicy])


@admin.register(TlsCertificate)
class TlsCertificateAdmin(AuditedModelAdmin, admin.ModelAdmin):
    """Read-only: certificates come and go through the API's checks (deployments.tls_services); keys never show."""

    list_display = ("public_id", "deployment", "kind", "source", "subject", "not_after")
    list_filter = ("kind", "source")
    search_fields = ("public_id", "deployment__public_id", "subject", "fingerprint_sha256")
    exclude = ("private_key_encrypted",)
    readonly_fields = [f.name for f in TlsCertificate._meta.concrete_fields if f.name != "private_key_encrypted"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(CertificateAuthority)
class CertificateAuthorityAdmin(AuditedModelAdmin, admin.ModelAdmin):
    """The control plane's CA: shown, never edited (its key is not even read here)."""

    list_display = ("subject", "not_before", "not_after", "fingerprint_sha256")
    exclude = ("private_key_encrypted",)
    readonly_fields = (
        "name",
        "certificate_pem",
        "subject",
        "not_before",
        "not_after",
        "fingerprint_sha256",
        "created_at",
    )

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
