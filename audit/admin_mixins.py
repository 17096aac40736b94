"""Makes every change made in the admin backoffice land in the audit log, in the same transaction."""

from django.db import transaction
from django.forms.models import model_to_dict

from audit.services import audit_record


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
            changed = {
                name: str(form.cleaned_data.get(name))
                for name in (form.changed_data or [])
                if "password" not in name and "secret" not in name
            }
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
                summary={
                    "fields": {
                        k: str(v)
                        for k, v in model_to_dict(obj).items()
                        if "password" not in k and "secret" not in k and "hash" not in k
                    }
                },
            )
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)
