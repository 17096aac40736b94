"""The deployment page's Devices tab (Premium): the device registry with its filters and paging, registering a device
(its credentials shown once), a device's facts, enable/disable, delete, its shadow editor, and CSV imports.

Every read and write calls what iot.api calls (iot.selectors, iot.services, the API's input serializer and filter)
after the scope check the API makes (device:read, device:write). Nothing here decides whether an input is valid or
writes a row itself; a non-Premium deployment has no such pages (404).
"""

from __future__ import annotations

import base64
import json
import re

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from rest_framework import serializers

from console import errors, tenancy
from console.forms import ApiForm, ConsoleForm
from console.once import once
from controlplane.errors import Conflict, NotFound, ValidationFailed
from deployments.models import Plan
from iot import csv_import, selectors, services, shadow, validation
from iot.api import DeviceCreateSerializer, DeviceFilter, DeviceGroupCreateSerializer, DeviceUpdateSerializer
from iot.models import Device, Shadow

PAGE_SIZE = 50
HISTORY_SHOWN = 10
# A larger upload is refused before it is read: the import's own bound on a CSV, uncompressed.
MAX_UPLOAD_BYTES = csv_import.MAX_DECOMPRESSED_BYTES
GZIP_MAGIC = b"\x1f\x8b"
CSV_TEMPLATE = (
    "device_id,name,product,tags,attributes,groups,enabled\n"
    'sensor-0001,Boiler room sensor,thermo-v2,plant-a;floor-1,"{""firmware"": ""1.4.2""}",,true\n'
    "sensor-0002,,thermo-v2,plant-a,,,false\n"
)
JSON_ATTRS = {"rows": 8, "spellcheck": "false", "autocomplete": "off", "class": "mono"}


# -- forms ----------------------------------------------------------------------------------------------------------


def _json_field(value: str, *, empty):
    """The JSON value typed in a text box (`empty` when blank), read as the API's parser reads a body."""
    if not value.strip():
        return empty
    try:
        return shadow.decode_json(value)
    except shadow.ShadowRejected:
        raise forms.ValidationError("This is not valid JSON (check quotes, commas and brackets).") from None


class DeviceRegisterForm(ApiForm):
    serializer_class: type[serializers.Serializer] | None = DeviceCreateSerializer

    device_id = forms.CharField(
        label="Device id",
        strip=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text=f"The device's MQTT client id: {validation.DEVICE_ID_RULE}.",
    )
    name = forms.CharField(label="Name", required=False, strip=False)
    product = forms.CharField(label="Product", required=False, strip=False, help_text="A model or product line.")
    tags = forms.CharField(
        label="Tags",
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text="Separated by commas or spaces, e.g. plant-a, floor-1.",
    )
    attributes = forms.CharField(
        label="Attributes (JSON object)",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs=JSON_ATTRS),
        help_text='Anything you want to keep about the device, e.g. {"firmware": "1.4.2"}. At most 8 KiB.',
    )
    groups = forms.MultipleChoiceField(label="Groups", required=False, widget=forms.CheckboxSelectMultiple)
    enabled = forms.BooleanField(label="Enabled (it may connect)", required=False, initial=True)
    credential_type = forms.ChoiceField(
        label="Credentials",
        choices=[("password", "Password"), ("certificate", "X.509 certificate")],
        initial="password",
        required=False,  # left out (an older form, a script): a password, as through the API
        widget=forms.RadioSelect,
        help_text="A certificate device connects to the mqtts_x509 port with its certificate and key, no password.",
    )
    csr = forms.CharField(
        label="Certificate signing request (optional, PEM)",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false", "autocomplete": "off", "class": "mono"}),
        help_text="X.509 only: paste the device's CSR to have its own key certified; leave it empty and a key is "
        "made for the device and shown once.",
    )

    def __init__(self, *args, groups=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["groups"].choices = [(g.name, g.name) for g in groups]
        if not groups:
            del self.fields["groups"]

    def clean_attributes(self):
        return _json_field(self.cleaned_data.get("attributes") or "", empty={})

    def serializer_data(self) -> dict:
        data = self.cleaned_data
        return {
            "device_id": data.get("device_id", ""),
            "name": data.get("name", ""),
            "product": data.get("product", ""),
            # Split on what the help text names only: any other character (a tab, a line break) stays in a tag,
            # where the API's checks refuse it.
            "tags": [tag for tag in re.split("[ ,]+", data.get("tags") or "") if tag],
            "attributes": data.get("attributes", {}),
            "groups": list(data.get("groups") or []),
            "enabled": bool(data.get("enabled")),
            "credential_type": data.get("credential_type") or "password",
            "csr": data.get("csr") or None,
        }


class DeviceEditForm(DeviceRegisterForm):
    """A device's description and groups; its id and credentials stay (enable/disable has its own button)."""

    serializer_class = DeviceUpdateSerializer

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.fields["device_id"]
        del self.fields["enabled"]
        del self.fields["credential_type"]
        del self.fields["csr"]

    def serializer_data(self) -> dict:
        data = super().serializer_data()
        del data["device_id"], data["enabled"], data["credential_type"], data["csr"]
        if "groups" not in self.fields:
            del data["groups"]
        return data


class DeviceGroupForm(ApiForm):
    serializer_class = DeviceGroupCreateSerializer

    name = forms.CharField(
        label="Group name",
        strip=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text="1 to 64 of A-Z a-z 0-9 _ . : -",
    )
    description = forms.CharField(label="Description", required=False)


class ShadowDesiredForm(ConsoleForm):
    desired = forms.CharField(
        label="Desired state (JSON)",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={**JSON_ATTRS, "rows": 12}),
        help_text=(
            "Merged into the desired state: fields you leave out keep their value, a field set to null is removed, "
            "and null alone removes every desired field. The device receives what differs from what it reported."
        ),
    )
    version = forms.IntegerField(required=False, min_value=0, max_value=shadow.MAX_VERSION, widget=forms.HiddenInput)

    def clean_desired(self):
        value = self.cleaned_data.get("desired") or ""
        if not value.strip():
            raise forms.ValidationError('Type a JSON object, e.g. {"setpoint": 21.5}, or null to clear desired.')
        return _json_field(value, empty=None)

    def body(self) -> dict:
        body: dict = {"state": {"desired": self.cleaned_data["desired"]}}
        if self.cleaned_data.get("version") is not None:
            body["version"] = self.cleaned_data["version"]
        return body


class DeviceImportForm(ConsoleForm):
    file = forms.FileField(
        label="CSV file",
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,.gz,text/csv"}),
        help_text=(
            f"UTF-8, header line first, up to {csv_import.MAX_ROWS:,} devices, at most "
            f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE // (1024 * 1024)} MiB: compress a larger file with gzip (.csv.gz)."
        ),
    )


class DeviceFilterForm(ConsoleForm):
    """The list's filters: the API's DeviceFilter does the filtering; this only reads what the page's fields hold."""

    tag = forms.CharField(label="Tags", required=False, help_text="Devices with every one of these (comma-separated).")
    product = forms.CharField(label="Product", required=False)
    online = forms.ChoiceField(
        label="Connection", required=False, choices=[("", "Any"), ("true", "Online"), ("false", "Offline")]
    )
    enabled = forms.ChoiceField(
        label="Enabled", required=False, choices=[("", "Any"), ("true", "Enabled"), ("false", "Disabled")]
    )
    group = forms.ChoiceField(label="Group", required=False)

    def __init__(self, *args, groups=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["group"].choices = [("", "Any"), *((g.name, g.name) for g in groups)]
        if not groups:
            del self.fields["group"]

    def clean(self):
        cleaned = super().clean()
        for name in ("tag", "product"):
            try:
                validation.text(cleaned.get(name) or "", max_length=128)
            except ValueError as exc:
                self.add_error(name, str(exc))
        return cleaned

    def filter_data(self) -> dict:
        return {name: value for name, value in self.cleaned_data.items() if value}


# -- tenancy --------------------------------------------------------------------------------------------------------


def _tab_console(request, org_id, project_id, dep_id, *, write: bool = False):
    """The page's console for a Premium deployment, after the API's scope check; 404 for any other plan."""
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    deployment = console.deployment
    if deployment is None or deployment.plan.code != Plan.Code.PREMIUM:
        raise Http404("No such page: devices are a Premium feature.")
    console.require_in_project("device:write" if write else "device:read")
    console.crumb("Devices", tenancy.deployment_url(deployment, "deployment-devices"))
    return console


def _writable(console) -> bool:
    return console.can_in_project("device:write") and console.deployment.desired_state != "deleted"


def _device(console, device_id: str) -> Device:
    found = selectors.device_queryset().filter(deployment=console.deployment, device_id=device_id).first()
    if found is None:
        raise Http404("No such device.")
    found.deployment = console.deployment
    return found


def _url(console, name: str, *extra) -> str:
    return reverse(
        f"console:{name}",
        args=[console.organization.public_id, console.project.public_id, console.deployment.public_id, *extra],
    )


def _connection(deployment) -> dict:
    endpoints = deployment.endpoints or {}
    ports = endpoints.get("ports") or {}
    return {
        "host": endpoints.get("host", ""),
        "port": ports.get("mqtt"),
        "mqtts": ports.get("mqtts"),
        "mqtts_x509": ports.get("mqtts_x509"),
    }


def _credential_files(device, credentials) -> list[dict]:
    """A certificate device's PEM texts, each to show and download once (as a data: link: nothing is kept)."""
    issued = credentials.certificate
    if issued is None:
        return []
    files = [
        ("certificate", "Certificate", f"{device.device_id}.crt", issued.certificate_pem),
        ("private-key", "Private key", f"{device.device_id}.key", issued.private_key_pem),
        ("ca-certificate", "Device CA", f"{device.deployment.public_id}-device-ca.crt", credentials.ca_certificate_pem),
    ]
    return [
        {
            "id": key,
            "label": label,
            "filename": filename,
            "text": text,
            "href": "data:application/x-pem-file;base64," + base64.b64encode(text.encode("ascii")).decode("ascii"),
        }
        for key, label, filename, text in files
        if text
    ]


# -- the list -------------------------------------------------------------------------------------------------------


@login_required
@require_GET
def device_list(request, org_id, project_id, dep_id):
    """The deployment's devices, filtered as the API filters them, a page at a time by device id (keyset)."""
    console = _tab_console(request, org_id, project_id, dep_id)
    return _list_page(request, console)


def _list_page(request, console, *, group_form=None, status=200):
    deployment = console.deployment
    groups = list(selectors.device_groups(deployment=deployment).annotate(device_count=Count("devices")))
    form = DeviceFilterForm(request.GET or None, groups=groups)
    queryset = selectors.device_queryset().filter(deployment=deployment)
    if form.is_bound:
        if form.is_valid():
            filtered = DeviceFilter(data=form.filter_data(), queryset=queryset)
            if filtered.is_valid():
                queryset = filtered.qs
            else:
                for field, values in filtered.errors.items():
                    form.add_error(field if field in form.fields else None, values)
                queryset, status = queryset.none(), 400
        else:
            queryset, status = queryset.none(), 400
    total = queryset.count()
    after, before = request.GET.get("after", ""), request.GET.get("before", "")
    for anchor in (after, before):
        if anchor and not validation.DEVICE_ID_RE.match(anchor):
            form.add_error(None, "This page link is not valid: go back to the first page.")
            queryset, status = queryset.none(), 400
    if before:
        rows = list(queryset.filter(device_id__lt=before).order_by("-device_id")[: PAGE_SIZE + 1])
        more_before, more_after = len(rows) > PAGE_SIZE, True
        rows = list(reversed(rows[:PAGE_SIZE]))
    else:
        page = queryset.filter(device_id__gt=after) if after else queryset
        rows = list(page.order_by("device_id")[: PAGE_SIZE + 1])
        more_after, more_before = len(rows) > PAGE_SIZE, bool(after)
        rows = rows[:PAGE_SIZE]
    query = request.GET.copy()
    query.pop("after", None)
    query.pop("before", None)
    newer = older = None
    if rows and more_after:
        query["after"] = rows[-1].device_id
        newer = f"?{query.urlencode()}"
        query.pop("after")
    if rows and more_before:
        query["before"] = rows[0].device_id
        older = f"?{query.urlencode()}"
    context = {
        "console": console,
        "deployment": deployment,
        "tab": "devices",
        "form": form,
        "devices": rows,
        "total": total,
        "filtered": bool(form.is_bound and form.is_valid() and form.filter_data()),
        "next_url": newer,
        "previous_url": older,
        "can_write": _writable(console),
        "groups": groups,
        "group_form": group_form or DeviceGroupForm(prefix="group"),
    }
    return render(request, "console/devices/list.html", context, status=status)


# -- register -------------------------------------------------------------------------------------------------------


def _register_context(console, form) -> dict:
    return {
        "console": console,
        "deployment": console.deployment,
        "tab": "devices",
        "form": form,
        "list_url": _url(console, "deployment-devices"),
    }


@login_required
@require_http_methods(["GET", "POST"])
@never_cache
@once
def device_register(request, org_id, project_id, dep_id):
    """GET: the form. POST: register the device; its credentials are in the answer, and nowhere else ever again."""
    console = _tab_console(request, org_id, project_id, dep_id, write=True)
    console.crumb("Register a device")
    groups = list(selectors.device_groups(deployment=console.deployment))
    if request.method == "GET":
        form = DeviceRegisterForm(groups=groups)
        return render(request, "console/devices/register.html", _register_context(console, form))
    form = DeviceRegisterForm(request.POST, groups=groups)
    status = 400
    if form.is_valid():
        try:
            device, credentials, operation = services.device_create(
                deployment=console.deployment, actor=console.principal, **form.validated
            )
        except errors.REFUSALS as exc:
            # The one conflict of a live deployment is the id being taken: said beside the id.
            taken = isinstance(exc, Conflict) and console.deployment.desired_state != "deleted"
            status = errors.to_form(form, exc, aliases={"__all__": "device_id"} if taken else None)
        else:
            device.deployment = console.deployment
            context = {
                "console": console,
                "deployment": console.deployment,
                "tab": "devices",
                "device": device,
                "credentials": credentials,
                "files": _credential_files(device, credentials),
                "operation": operation,
                "connection": _connection(console.deployment),
                "detail_url": _url(console, "deployment-device", device.device_id),
                "list_url": _url(console, "deployment-devices"),
            }
            return render(request, "console/devices/registered.html", context, status=201)
    return render(request, "console/devices/register.html", _register_context(console, form), status=status)


# -- one device -----------------------------------------------------------------------------------------------------


def _shadow_view(device) -> dict:
    """What the editor shows: the document as the API's GET answers it (or none yet), pretty-printed."""
    try:
        document = selectors.shadow_get(device=device)
    except NotFound:
        document = None
    history = list(selectors.shadow_history(device=device).order_by("-version")[:HISTORY_SHOWN])
    state = (document or {}).get("state", {})

    def pretty(value) -> str:
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)

    # The version an edit is made at, even before the first change (a shadow row is made with its device): a device
    # that reports meanwhile makes the edit stale, as any other change does.
    version = Shadow.objects.filter(device=device).values_list("version", flat=True).first()
    return {
        "document": document,
        "version": version,
        "desired": pretty(state.get("desired") or {}),
        "reported": pretty(state.get("reported") or {}),
        "delta": pretty(state["delta"]) if state.get("delta") else "",
        "metadata": pretty((document or {}).get("metadata") or {}),
        "history": [
            {
                "version": change.version,
                "kind": change.get_kind_display(),
                "source": change.get_source_display(),
                "created_at": change.created_at,
                "state": json.dumps(change.state, sort_keys=True, ensure_ascii=False),
            }
            for change in history
        ],
        "changed_at": history[0].created_at if history else None,
    }


def _detail_context(console, device, *, shadow_form=None, conflict: str = "") -> dict:
    view = _shadow_view(device)
    if shadow_form is None:
        shadow_form = ShadowDesiredForm(initial={"desired": view["desired"], "version": view["version"]})
    elif conflict:
        # The person sees the current document beside what they typed; saving again is a decision made knowing it.
        shadow_form.data = shadow_form.data.copy()
        shadow_form.data["version"] = "" if view["version"] is None else str(view["version"])
    return {
        "console": console,
        "deployment": console.deployment,
        "tab": "devices",
        "device": device,
        "shadow": view,
        "shadow_form": shadow_form,
        "conflict": conflict,
        "can_write": _writable(console),
        "list_url": _url(console, "deployment-devices"),
        "groups": [g.name for g in device.groups.all()],
        "attributes": json.dumps(device.attributes, indent=2, sort_keys=True, ensure_ascii=False),
    }


@login_required
@require_GET
def device_detail(request, org_id, project_id, dep_id, device_id):
    console = _tab_console(request, org_id, project_id, dep_id)
    device = _device(console, device_id)
    console.crumb(device.device_id)
    return render(request, "console/devices/detail.html", _detail_context(console, device))


@login_required
@require_POST
@once
def device_shadow(request, org_id, project_id, dep_id, device_id):
    """Change the desired state, at the version the editor was shown (a stale one is refused and shown)."""
    console = _tab_console(request, org_id, project_id, dep_id, write=True)
    device = _device(console, device_id)
    console.crumb(device.device_id)
    form = ShadowDesiredForm(request.POST)
    status, conflict = 400, ""
    if form.is_valid():
        try:
            accepted = services.shadow_update_desired(device=device, actor=console.principal, body=form.body())
        except Conflict as exc:
            if exc.code != "version-conflict":
                status = errors.to_form(form, exc)
            else:
                status, conflict = 409, exc.message
                form.add_error(
                    None,
                    f"{exc.message}. Someone changed this shadow after you opened it: look at the current document "
                    "below, then save again if your change still applies.",
                )
        except errors.REFUSALS as exc:
            status = errors.to_form(form, exc, aliases={"state": "desired", "__all__": "desired", "version": "desired"})
        else:
            messages.success(request, f"Desired state saved: the shadow is at version {accepted['version']}.")
            return redirect(_url(console, "deployment-device", device.device_id) + "#shadow-heading")
    context = _detail_context(console, device, shadow_form=form, conflict=conflict)
    return render(request, "console/devices/detail.html", context, status=status)


@login_required
@require_POST
@once
def device_enabled(request, org_id, project_id, dep_id, device_id):
    """Enable or disable a device (`enabled` true/false); disabling disconnects it and refuses it from then on."""
    console = _tab_console(request, org_id, project_id, dep_id, write=True)
    device = _device(console, device_id)
    wanted = request.POST.get("enabled")
    if wanted not in ("true", "false"):
        messages.error(request, "Choose to enable or disable the device.")
        return redirect(_url(console, "deployment-device", device.device_id))
    try:
        device, operation = services.device_update(device=device, actor=console.principal, enabled=wanted == "true")
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        if device.enabled:
            messages.success(request, f"{device.device_id} is enabled: it may connect again.")
        else:
            messages.success(request, f"{device.device_id} is disabled: it is disconnected and refused from now on.")
    return redirect(_url(console, "deployment-device", device.device_id))


@login_required
@require_http_methods(["GET", "POST"])
@never_cache
@once
def device_credentials(request, org_id, project_id, dep_id, device_id):
    """GET: what issuing new credentials changes. POST: issue them; they are shown this once."""
    console = _tab_console(request, org_id, project_id, dep_id, write=True)
    device = _device(console, device_id)
    console.crumb(device.device_id, _url(console, "deployment-device", device.device_id))
    context = {
        "console": console,
        "deployment": console.deployment,
        "tab": "devices",
        "device": device,
        "detail_url": _url(console, "deployment-device", device.device_id),
        "list_url": _url(console, "deployment-devices"),
    }
    if request.method == "GET":
        console.crumb("New credentials")
        return render(request, "console/devices/credentials.html", context)
    try:
        device, credentials, operation = services.device_credentials_rotate(device=device, actor=console.principal)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
        return redirect(context["detail_url"])
    device.deployment = console.deployment
    console.crumb("New credentials")
    context.update(
        device=device,
        credentials=credentials,
        files=_credential_files(device, credentials),
        operation=operation,
        connection=_connection(console.deployment),
    )
    return render(request, "console/devices/registered.html", {**context, "rotated": True}, status=201)


@login_required
@require_http_methods(["GET", "POST"])
@once
def device_delete(request, org_id, project_id, dep_id, device_id):
    """GET: what deleting the device removes, and a confirm button. POST: delete it."""
    console = _tab_console(request, org_id, project_id, dep_id, write=True)
    device = _device(console, device_id)
    if request.method == "POST":
        try:
            services.device_delete(device=device, actor=console.principal)
        except errors.REFUSALS as exc:
            errors.to_page(request, exc)
            return redirect(_url(console, "deployment-device", device.device_id))
        messages.success(request, f"Device {device.device_id} deleted, with its shadow and history.")
        return redirect(_url(console, "deployment-devices"))
    console.crumb(device.device_id, _url(console, "deployment-device", device.device_id))
    console.crumb("Delete")
    context = {
        "console": console,
        "deployment": console.deployment,
        "tab": "devices",
        "device": device,
        "detail_url": _url(console, "deployment-device", device.device_id),
    }
    return render(request, "console/devices/delete.html", context)


@login_required
@require_http_methods(["GET", "POST"])
@once
def device_edit(request, org_id, project_id, dep_id, device_id):
    """GET: the device's description and groups in a form. POST: change them."""
    console = _tab_console(request, org_id, project_id, dep_id, write=True)
    device = _device(console, device_id)
    detail_url = _url(console, "deployment-device", device.device_id)
    console.crumb(device.device_id, detail_url)
    console.crumb("Edit")
    groups = list(selectors.device_groups(deployment=console.deployment))
    status = 200
    if request.method == "GET":
        initial = {
            "name": device.name,
            "product": device.product,
            "tags": ", ".join(device.tags),
            "attributes": json.dumps(device.attributes, indent=2, sort_keys=True, ensure_ascii=False),
            "groups": [g.name for g in device.groups.all()],
        }
        form = DeviceEditForm(initial=initial, groups=groups)
    else:
        form = DeviceEditForm(request.POST, groups=groups)
        status = 400
        if form.is_valid():
            try:
                services.device_update(device=device, actor=console.principal, **form.validated)
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                messages.success(request, f"{device.device_id} saved.")
                return redirect(detail_url)
    context = {
        "console": console,
        "deployment": console.deployment,
        "tab": "devices",
        "device": device,
        "form": form,
        "detail_url": detail_url,
    }
    return render(request, "console/devices/edit.html", context, status=status)


# -- groups ---------------------------------------------------------------------------------------------------------


@login_required
@require_POST
@once
def device_group_create(request, org_id, project_id, dep_id):
    console = _tab_console(request, org_id, project_id, dep_id, write=True)
    form = DeviceGroupForm(request.POST, prefix="group")
    status = 400
    if form.is_valid():
        try:
            group = services.device_group_create(
                deployment=console.deployment, actor=console.principal, **form.validated
            )
        except errors.REFUSALS as exc:
            taken = isinstance(exc, Conflict) and console.deployment.desired_state != "deleted"
            status = errors.to_form(form, exc, aliases={"__all__": "name"} if taken else None)
        else:
            messages.success(request, f"Group {group.name} created: choose it when you register or edit a device.")
            return redirect(_url(console, "deployment-devices") + "#groups-heading")
    return _list_page(request, console, group_form=form, status=status)


@login_required
@require_http_methods(["GET", "POST"])
@once
def device_group_delete(request, org_id, project_id, dep_id, group_name):
    """GET: what deleting the group changes, and a confirm button. POST: delete it (its devices stay)."""
    console = _tab_console(request, org_id, project_id, dep_id, write=True)
    group = (
        selectors.device_groups(deployment=console.deployment)
        .annotate(device_count=Count("devices"))
        .filter(name=group_name)
        .first()
    )
    if group is None:
        raise Http404("No such group.")
    group.deployment = console.deployment
    list_url = _url(console, "deployment-devices")
    if request.method == "POST":
        try:
            services.device_group_delete(group=group, actor=console.principal)
        except errors.REFUSALS as exc:
            errors.to_page(request, exc)
        else:
            messages.success(request, f"Group {group.name} deleted; its devices stay, outside it.")
        return redirect(list_url)
    console.crumb(f"Delete group {group.name}")
    context = {"console": console, "deployment": console.deployment, "tab": "devices", "group": group}
    return render(request, "console/devices/group_delete.html", {**context, "list_url": list_url})


# -- import ---------------------------------------------------------------------------------------------------------


def _row_errors(exc: ValidationFailed) -> tuple[list[dict], list[str]]:
    """The import's refusal as a table (line, column, message) and messages about the whole file."""
    rows, general = [], []
    for error in exc.errors:
        parts = (error.field or "").split(".")
        if len(parts) >= 2 and parts[0] == "rows" and parts[1].isdigit():
            column = parts[2] if len(parts) > 2 else ""
            message = error.message
            prefix = f"line {parts[1]}" + (f", {column}" if column else "") + ": "
            rows.append({"line": int(parts[1]), "column": column, "message": message.removeprefix(prefix)})
        else:
            general.append(error.message)
    return rows, general


def _import_context(console, form, **extra) -> dict:
    return {
        "console": console,
        "deployment": console.deployment,
        "tab": "devices",
        "form": form,
        "max_rows": csv_import.MAX_ROWS,
        "columns": csv_import.COLUMNS,
        "template_url": _url(console, "deployment-devices-import-template"),
        "list_url": _url(console, "deployment-devices"),
        **extra,
    }


@login_required
@require_http_methods(["GET", "POST"])
@never_cache
@once
def device_import(request, org_id, project_id, dep_id):
    """GET: the upload form and the format. POST: import every row or none; every bad row is listed."""
    console = _tab_console(request, org_id, project_id, dep_id, write=True)
    console.crumb("Import")
    if request.method == "GET":
        return render(request, "console/devices/import.html", _import_context(console, DeviceImportForm()))
    form = DeviceImportForm(request.POST, request.FILES)
    if not form.is_valid():
        return render(request, "console/devices/import.html", _import_context(console, form), status=400)
    upload = form.cleaned_data["file"]
    if upload.size > MAX_UPLOAD_BYTES:
        form.add_error("file", f"This file is {upload.size:,} bytes; at most {MAX_UPLOAD_BYTES:,}.")
        return render(request, "console/devices/import.html", _import_context(console, form), status=400)
    data = upload.read()
    try:
        imported, operation = services.devices_import(
            deployment=console.deployment,
            actor=console.principal,
            data=data,
            content_encoding="gzip" if data.startswith(GZIP_MAGIC) else "",
        )
    except ValidationFailed as exc:
        row_errors, general = _row_errors(exc)
        for message in general:
            form.add_error("file", message)
        context = _import_context(console, form, row_errors=row_errors, file_name=upload.name)
        return render(request, "console/devices/import.html", context, status=400)
    except errors.REFUSALS as exc:
        status = errors.to_form(form, exc, aliases={"__all__": "file"})
        return render(request, "console/devices/import.html", _import_context(console, form), status=status)
    lines = ["device_id,username,password", *(f"{d.device_id},{c.username},{c.password}" for d, c in imported)]
    context = {
        "console": console,
        "deployment": console.deployment,
        "tab": "devices",
        "count": len(imported),
        "operation": operation,
        "credentials_csv": "\n".join(lines),
        "list_url": _url(console, "deployment-devices"),
        "connection": _connection(console.deployment),
    }
    return render(request, "console/devices/imported.html", context, status=201)


@login_required
@require_GET
def device_import_template(request, org_id, project_id, dep_id):
    """A CSV with the import's header and two example rows."""
    _tab_console(request, org_id, project_id, dep_id)
    response = HttpResponse(CSV_TEMPLATE, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="devices-template.csv"'
    return response
