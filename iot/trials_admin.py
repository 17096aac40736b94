"""Backoffice of Premium trials: the list of trials and their deployments, and the staff's grant form (its "add"
page), which calls iot.trials.premium_trial_grant like `manage.py grant_premium_trial` does. Nothing is edited here
directly: a trial changes only through the service, so every change is authorized and audited."""

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from controlplane.errors import DomainError
from iot import trials
from iot.trials_models import PremiumTrial, TrialDeployment
from organizations.access import Principal
from organizations.models import Organization


class PremiumTrialGrantForm(forms.Form):
    organization = forms.CharField(max_length=32, help_text="The organization's public id (org_…).")
    deployments = forms.IntegerField(
        initial=trials.MAX_TRIAL_DEPLOYMENTS, help_text=f"1 to {trials.MAX_TRIAL_DEPLOYMENTS} trial deployments."
    )
    days = forms.IntegerField(initial=trials.DEFAULT_DAYS, help_text=f"1 to {trials.MAX_DAYS} days from now.")

    def clean_organization(self):
        value = self.cleaned_data["organization"].strip()
        found = Organization.objects.filter(public_id=value).first()
        if found is None:
            raise forms.ValidationError(f"No organization {value!r}.")
        return found


class TrialDeploymentInline(admin.TabularInline):
    model = TrialDeployment
    extra = 0
    can_delete = False
    fields = ("deployment", "started_at", "outcome", "converted_at", "stopped_at", "deleted_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(PremiumTrial)
class PremiumTrialAdmin(admin.ModelAdmin):
    list_display = ("public_id", "organization", "deployments", "starts_at", "ends_at", "ended_at")
    search_fields = ("public_id", "organization__name", "organization__public_id")
    readonly_fields = (
        "public_id",
        "organization",
        "deployments",
        "starts_at",
        "ends_at",
        "granted_by",
        "reminded_3d_at",
        "reminded_1d_at",
        "ended_at",
        "created_at",
    )
    inlines = [TrialDeploymentInline]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def add_view(self, request, form_url="", extra_context=None):
        """Grant (or change, before its end) an organization's trial through the service."""
        if not self.has_add_permission(request):
            return HttpResponseRedirect(reverse("admin:index"))
        form = PremiumTrialGrantForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            values = form.cleaned_data
            try:
                trial = trials.premium_trial_grant(
                    organization=values["organization"],
                    actor=Principal(user=request.user),
                    deployments=values["deployments"],
                    days=values["days"],
                )
            except DomainError as exc:
                for error in exc.errors or []:
                    form.add_error(error.field if error.field in form.fields else None, error.message)
                if not exc.errors:
                    form.add_error(None, exc.message)
            else:
                self.message_user(
                    request,
                    f"{values['organization']}: Premium trial {trial.public_id}, {trial.deployments} trial "
                    f"deployment(s), ends {trials._fmt(trial.ends_at)}.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(reverse("admin:iot_premiumtrial_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Grant a Premium trial",
            "form": form,
            "opts": self.model._meta,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/iot/premium_trial_grant.html", context)
