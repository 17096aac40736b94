"""Backoffice view of VPC peerings: read-only, with one action (re-poll now). What the provider says is the poll's to
write; staff change a peering through the same services as customers."""

from django.contrib import admin, messages

from networking import services
from networking.models import VpcPeering


@admin.register(VpcPeering)
class VpcPeeringAdmin(admin.ModelAdmin):
    list_display = ("public_id", "deployment", "provider", "cidr", "state", "provider_state", "created_at")
    list_filter = ("provider", "state")
    search_fields = ("public_id", "deployment__public_id", "vpc_id", "network", "vnet_name", "account_id")
    list_select_related = ("deployment",)
    actions = ["poll_now"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # rows stay for history; deleting at the provider is the API's DELETE

    @admin.action(description="Poll the provider now")
    def poll_now(self, request, queryset):
        for peering in queryset.exclude(state=VpcPeering.State.DELETED):
            services.vpc_peering_poll_now(peering=peering)
        messages.info(request, "Polls enqueued.")
