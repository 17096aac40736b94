"""Makes every change made in the admin backoffice land in the audit log, in the same transaction."""

import re

from django.db import transaction
from django.forms.models import model_to_dict

from audit.services import audit_record

# Fields whose values never reach the audit log: that one changed is recorded, its value is not. Matched on the name,
# broadly (a form's own fields, such as the Region's pasted kubeconfig, and third-party models, such as django-otp's
# TOTP seed `key`, have no flag to read): hiding a harmless value costs nothing, keeping a credential for ever does.
_SENSITIVE = re.compile(r"password|secret|hash|token|key|kubeconfig|credential|private|encrypted", re.IGNORECASE)
REDACTED = "[redacted]"


def _shown(name: str, value) -> str:
    return REDACTED if _SENSITIVE.search(name) else str(value)


def _organization_of(obj):
    for path in ("organization", "project.organization", "membership.organization"):
        target = obj
        for part in path.split("."):
            target = getattr(target, part, None)
            if target is None:
                break
        if target is not None:
            return target
    return obj if obj._meta.model_name == "organization" else None


class AuditedModelAdmin:
    def _actor(self, request):
        from organizations.access import Principal

        return Principal(user=request.user)

    def save_model(self, request, obj, form, change):
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            changed = {name: _shown(name, form.cleaned_data.get(name)) for name in (form.changed_data or [])}
            audit_record(
                actor=self._actor(request),
                organization=_organization_of(obj),
                action=f"admin.{obj._meta.model_name}.{'update' if change else 'create'}",
                target=obj,
                summary={"changed": changed},
            )

    def delete_model(self, request, obj):
        with transaction.atomic():
            audit_record(
                actor=self._actor(request),
                organization=_organization_of(obj),
                action=f"admin.{obj._meta.model_name}.delete",
                target=obj,
                summary={"fields": {name: _shown(name, value) for name, value in model_to_dict(obj).items()}},
            )
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)
