"""The deployment page's TLS tab: the control plane's CA to download, the deployment's certificates with their facts
and dates, issuing (rotating) the server certificate from that CA with extra names, uploads of a server certificate
or a client CA with each check's message beside its field, and delete.

Uploads and deletes call deployments.tls_services, the API's services, after the scope check the API's viewset makes.
Nothing here parses a certificate or decides whether one is acceptable, and no private key is ever rendered.
"""

from __future__ import annotations

import dataclasses
import datetime
import shlex

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods

from console import errors, tenancy
from console.forms import ApiForm
from console.once import once
from deployments import tls_services
from deployments.api import TlsCertificateCreateSerializer, TlsCertificateIssueSerializer
from deployments.models import TlsCertificate

# A certificate this close to its end is highlighted (the default "certificate expiring" alert speaks at 30 days).
EXPIRING_SOON = datetime.timedelta(days=30)
# PEM text the API accepts (deployments.api.PemTextField): a larger file is refused before it is read.
MAX_PEM_BYTES = 65536
PEM_ATTRS = {"rows": 6, "spellcheck": "false", "autocomplete": "off", "class": "mono"}


class KeyTextarea(forms.Textarea):
    """A private key's text box: what was typed is never sent back in a page, even one that refuses it."""

    def format_value(self, value):
        return None


def _pem_file(label: str) -> forms.FileField:
    return forms.FileField(
        label=label, required=False, widget=forms.ClearableFileInput(attrs={"accept": ".pem,.crt,.cer,.key,.txt"})
    )


class _PemUploadForm(ApiForm):
    """PEM fields a person pastes or picks as files: a chosen file takes the place of its text box, and the text
    is what the API's serializer and the service check. Messages land beside the text box of the same name."""

    serializer_class = TlsCertificateCreateSerializer
    kind = ""
    pem_fields: tuple[str, ...] = ()

    def clean(self):
        for name in self.pem_fields:
            upload = self.cleaned_data.get(f"{name}_file")
            if not upload:
                continue
            if upload.size > MAX_PEM_BYTES:
                self.add_error(name, f"This file is {upload.size:,} bytes; PEM text of at most {MAX_PEM_BYTES:,}.")
                continue
            try:
                self.cleaned_data[name] = upload.read().decode("ascii")
            except UnicodeDecodeError:
                self.add_error(name, "This file is not PEM text (PEM is plain ASCII): export it as PEM, not DER.")
                continue
            if not isinstance(self.fields[name].widget, KeyTextarea):
                # A page that refuses the upload shows the file's text in the box: no need to pick it again.
                self.data = self.data.copy()
                self.data[self.add_prefix(name)] = self.cleaned_data[name]
        return super().clean()

    def serializer_data(self) -> dict:
        data = {"kind": self.kind}
        for name in self.pem_fields:
            if self.cleaned_data.get(name):
                data[name] = self.cleaned_data[name]
        return data


class TlsServerCertificateForm(_PemUploadForm):
    kind = TlsCertificate.Kind.SERVER
    pem_fields = ("certificate", "private_key", "chain")

    certificate = forms.CharField(
        label="Server certificate (PEM)",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs=PEM_ATTRS),
        help_text="The certificate alone, from -----BEGIN CERTIFICATE----- to -----END CERTIFICATE-----.",
    )
    certificate_file = _pem_file("…or the server certificate file")
    private_key = forms.CharField(
        label="Private key (PEM)",
        required=False,
        strip=False,
        widget=KeyTextarea(attrs=PEM_ATTRS),
        help_text="Unencrypted, RSA 2048 or more or EC P-256 or more. Kept encrypted; never shown again.",
    )
    private_key_file = _pem_file("…or the private key file")
    chain = forms.CharField(
        label="Chain (PEM)",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs=PEM_ATTRS),
        help_text="The issuing certificates in order, up to and including the root. Empty for a self-signed one.",
    )
    chain_file = _pem_file("…or the chain file")
    host_names = forms.CharField(
        label="Host names your clients connect to",
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text="Optional, separated by spaces or commas: each must be covered by the certificate.",
    )

    def serializer_data(self) -> dict:
        data = super().serializer_data()
        names = (self.cleaned_data.get("host_names") or "").replace(",", " ").split()
        if names:
            data["host_names"] = names
        return data


class TlsClientCaForm(_PemUploadForm):
    kind = TlsCertificate.Kind.CLIENT_CA
    pem_fields = ("certificate",)

    certificate = forms.CharField(
        label="Client CA certificates (PEM)",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs=PEM_ATTRS),
        help_text="One or more CA certificates that sign your clients' certificates.",
    )
    certificate_file = _pem_file("…or the client CA file")
    require_client_certificate = forms.BooleanField(
        label="Require a client certificate (refuse TLS clients without one)", required=False, initial=True
    )
    use_identity_as_username = forms.BooleanField(
        label="Use the client certificate's common name as the MQTT username (no password asked on mqtts and wss)",
        required=False,
    )

    def serializer_data(self) -> dict:
        data = super().serializer_data()
        data["require_client_certificate"] = bool(self.cleaned_data.get("require_client_certificate"))
        data["use_identity_as_username"] = bool(self.cleaned_data.get("use_identity_as_username"))
        return data


class TlsIssueForm(ApiForm):
    """Issue the server certificate from the control plane's CA again, with names of the customer's own."""

    serializer_class = TlsCertificateIssueSerializer
    extra_sans = forms.CharField(
        label="Extra names (SANs)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false", "autocomplete": "off", "class": "mono"}),
        help_text="Optional: DNS names or IP addresses your clients use besides the deployment's own, separated by "
        "spaces, commas or new lines; at most 20, no wildcards.",
    )

    def clean_extra_sans(self):
        text = self.cleaned_data.get("extra_sans") or ""
        # Separators are spaces, commas, tabs and new lines; any other control character is refused, not split on.
        if any((ord(c) < 32 and c not in "\t\n\r") or ord(c) == 127 for c in text):
            raise forms.ValidationError("Control characters are not allowed in names.")
        return text

    def serializer_data(self) -> dict:
        names = (self.cleaned_data.get("extra_sans") or "").replace(",", " ").split()
        return {"extra_sans": names}


FORMS = {
    "server": (TlsServerCertificateForm, "server"),
    "client_ca": (TlsClientCaForm, "client-ca"),
    "issue": (TlsIssueForm, "issue"),
}


def _tab_console(request, org_id, project_id, dep_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    console.crumb("TLS", tenancy.deployment_url(console.deployment, "deployment-tls"))
    return console


@dataclasses.dataclass
class ShownCertificate:
    """A certificate as the tab lists it: the row's facts (read through to it in templates) and what the page adds."""

    certificate: TlsCertificate
    active: bool  # what the TLS listeners use now
    expired: bool
    expiring: bool
    days_left: int

    def __getattr__(self, name):
        if name.startswith("__") or name == "certificate":  # copy and pickle probe before `certificate` is set
            raise AttributeError(name)
        return getattr(self.certificate, name)


def _certificates(deployment) -> list[ShownCertificate]:
    rows = list(TlsCertificate.objects.filter(deployment=deployment).select_related("created_by"))
    customer_server = any(r.kind == "server" and r.source == "customer" for r in rows)
    now = timezone.now()
    shown = []
    for row in rows:
        row.deployment = deployment
        expired = row.not_after <= now
        shown.append(
            ShownCertificate(
                certificate=row,
                active=row.kind == "client_ca" or row.source == "customer" or not customer_server,
                expired=expired,
                expiring=not expired and row.not_after - now <= EXPIRING_SOON,
                days_left=max((row.not_after - now).days, 0),
            )
        )
    # What the listeners serve first, then the issued one it replaced, then the client CA.
    return sorted(shown, key=lambda s: (s.certificate.kind != "server", not s.active, s.certificate.created_at))


def _endpoints(deployment, shown: list[ShownCertificate]) -> dict:
    """Where a client connects over TLS, and a command line that verifies the broker: against the downloaded ca.pem
    while the issued certificate is served, against the customer's own CA while theirs is."""
    endpoints = deployment.endpoints or {}
    host, ports = endpoints.get("host", ""), endpoints.get("ports") or {}
    urls = []
    if host and ports.get("mqtts"):
        urls.append(("mqtts", "MQTT over TLS", f"mqtts://{host}:{ports['mqtts']}"))
    if host and ports.get("wss"):
        urls.append(("wss", "MQTT over secure WebSocket", f"wss://{host}:{ports['wss']}/mqtt"))
    certificates = [s.certificate for s in shown]
    own = any(c.kind == "server" and c.source == "customer" for c in certificates)
    client_ca = next((c for c in certificates if c.kind == "client_ca"), None)
    two_way = client_ca is not None
    command = ""
    if host and ports.get("mqtts"):
        cafile = "your-ca.pem" if own else f"{deployment.public_id}-ca.pem"
        argv = ["mosquitto_sub", "--cafile", cafile, "-h", host, "-p", str(ports["mqtts"])]
        if two_way:
            argv += ["--cert", "client.crt", "--key", "client.key"]
        if client_ca is None or not client_ca.use_identity_as_username:
            argv += ["-u", "$MQTT_USERNAME", "-P", "$MQTT_PASSWORD"]  # else the certificate's name is the username
        argv += ["-t", "console/test", "-v"]
        command = " ".join(a if a.startswith("$") else shlex.quote(a) for a in argv)
        command = command.replace("$MQTT_USERNAME", '"$MQTT_USERNAME"').replace("$MQTT_PASSWORD", '"$MQTT_PASSWORD"')
    return {"host": host, "urls": urls, "command": command, "own_certificate": own, "two_way": two_way}


def _context(console, **forms_given) -> dict:
    deployment = console.deployment
    can_configure = console.can_in_project("deployment:configure")
    certificates = _certificates(deployment)
    return {
        "console": console,
        "deployment": deployment,
        "certificates": certificates,
        "endpoints": _endpoints(deployment, certificates),
        "authority": tls_services.certificate_authority(),
        "can_configure": can_configure and deployment.desired_state != "deleted",
        "server_form": forms_given.get("server") or TlsServerCertificateForm(prefix="server"),
        "client_ca_form": forms_given.get("client_ca") or TlsClientCaForm(prefix="client-ca"),
        "issue_form": forms_given.get("issue") or TlsIssueForm(prefix="issue"),
        "tab": "tls",
    }


@login_required
@require_http_methods(["GET", "POST"])
@sensitive_post_parameters("server-private_key")  # an error report never carries a pasted key
@once
def certificates(request, org_id, project_id, dep_id):
    """GET: the CA, the certificates and the forms. POST `kind` server or client_ca: upload one, replacing the
    deployment's certificate of the same kind; `kind` issue: issue the server certificate from our CA again."""
    console = _tab_console(request, org_id, project_id, dep_id)
    if request.method == "GET":
        return render(request, "console/tls/list.html", _context(console))
    console.require_in_project("deployment:configure")
    kind = request.POST.get("kind")
    if kind not in FORMS:
        raise Http404("No such certificate kind.")
    form_class, prefix = FORMS[kind]
    form = form_class(request.POST, request.FILES, prefix=prefix)
    status = 400
    if kind == "issue":
        if form.is_valid():
            try:
                row, operation = tls_services.tls_certificate_issue(
                    deployment=console.deployment, actor=console.principal, extra_sans=form.validated.get("extra_sans")
                )
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                messages.success(
                    request,
                    f"Server certificate {row.public_id} issued by the control plane's CA: fingerprint "
                    f"{row.fingerprint_sha256}, valid until {row.not_after:%Y-%m-%d %H:%M} UTC. The brokers take it "
                    f"up with operation {operation.public_id}.",
                )
                for warning in row.warnings:
                    messages.warning(request, warning)
                return redirect(tenancy.deployment_url(console.deployment, "deployment-tls"))
        return render(request, "console/tls/list.html", _context(console, issue=form), status=status)
    if form.is_valid():
        try:
            row, operation, replaced = tls_services.tls_certificate_create(
                deployment=console.deployment, actor=console.principal, **form.validated
            )
        except errors.REFUSALS as exc:
            status = errors.to_form(form, exc)
        else:
            what = "Server certificate" if row.kind == "server" else "Client CA"
            also = f", replacing {replaced}" if replaced else ""
            messages.success(
                request,
                f"{what} {row.public_id} added{also}: the brokers take it up with operation {operation.public_id}.",
            )
            for warning in row.warnings:
                messages.warning(request, warning)
            return redirect(tenancy.deployment_url(console.deployment, "deployment-tls"))
    return render(request, "console/tls/list.html", _context(console, **{kind: form}), status=status)


@login_required
@require_GET
def ca_pem(request, org_id, project_id, dep_id):
    """The control plane's CA certificate, the one the deployment's issued certificate chains up to."""
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    authority = tls_services.certificate_authority()
    response = HttpResponse(authority.certificate_pem, content_type="application/x-pem-file")
    response["Content-Disposition"] = f'attachment; filename="{console.deployment.public_id}-ca.pem"'
    return response


def _certificate(console, certificate_id) -> TlsCertificate:
    found = TlsCertificate.objects.filter(deployment=console.deployment, public_id=certificate_id).first()
    if found is None:
        raise Http404("No such certificate.")
    found.deployment = console.deployment
    return found


@login_required
@require_http_methods(["GET", "POST"])
@once
def certificate_delete(request, org_id, project_id, dep_id, certificate_id):
    """GET: what removing the certificate changes, and a confirm button. POST: remove it."""
    console = _tab_console(request, org_id, project_id, dep_id)
    console.require_in_project("deployment:configure")
    certificate = _certificate(console, certificate_id)
    tab = tenancy.deployment_url(console.deployment, "deployment-tls")
    if request.method == "POST":
        try:
            operation = tls_services.tls_certificate_delete(certificate=certificate, actor=console.principal)
        except errors.REFUSALS as exc:
            errors.to_page(request, exc)
        else:
            messages.success(
                request,
                f"{certificate.get_kind_display()} {certificate.public_id} removed: the brokers take the change up "
                f"with operation {operation.public_id}.",
            )
        return redirect(tab)
    console.crumb(f"Remove {certificate.public_id}")
    context = {
        "console": console,
        "deployment": console.deployment,
        "certificate": certificate,
        "issued": certificate.source == TlsCertificate.Source.CONTROL_PLANE,
        "tab_url": tab,
        "action": reverse(
            "console:deployment-tls-delete",
            args=[
                console.organization.public_id,
                console.project.public_id,
                console.deployment.public_id,
                certificate.public_id,
            ],
        ),
        "tab": "tls",
    }
    return render(request, "console/tls/delete.html", context)
