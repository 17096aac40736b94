"""The Premium deployment's Edge nodes tab: nodes with their bridge's status and last sighting, registering one (its
credentials and bridge file shown this once), the bridge file to download, new desired configurations with the
node's acknowledgement, and delete after a confirmation.

Writes call iot.edge_services, the API's services, after the API's input serializer and scope check. A new node's
password travels to the one page that shows it through the session, popped on display; it is never stored otherwise.
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from console import errors, shown_once
from console.forms import ApiForm
from console.once import once
from console.once import posted as _posted
from console.pages.codecs import _url, can_write, check_writable, premium_console, require_write
from iot import edge, edge_selectors, edge_services
from iot.edge_api import EdgeConfigCreateSerializer, EdgeNodeCreateSerializer
from iot.edge_models import EdgeNode

SHOWN_SESSION_KEY = "console_new_edge_node"
TOPICS_ATTRS = {"rows": 3, "spellcheck": "false", "autocomplete": "off", "class": "mono"}


def _lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


class EdgeNodeForm(ApiForm):
    serializer_class = EdgeNodeCreateSerializer

    name = forms.CharField(
        label="Node name",
        strip=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text=f"{edge.NODE_NAME_RULE}: its topics on the deployment are edge/{{name}}/….",
    )
    kind = forms.ChoiceField(label="Broker at the edge", choices=EdgeNode.Kind.choices)
    up_topics = forms.CharField(
        label="Topics sent up",
        required=False,
        widget=forms.Textarea(attrs=TOPICS_ATTRS),
        help_text="Local topic filters, one a line, such as sensors/#; they arrive under edge/{name}/.",
    )
    down_topics = forms.CharField(
        label="Topics brought down",
        required=False,
        widget=forms.Textarea(attrs=TOPICS_ATTRS),
        help_text="Filters under edge/{name}/ on the deployment (without that prefix), one a line.",
    )

    def serializer_data(self) -> dict:
        return {
            "name": self.cleaned_data.get("name", ""),
            "kind": self.cleaned_data.get("kind", ""),
            "up_topics": _lines(self.cleaned_data.get("up_topics", "")),
            "down_topics": _lines(self.cleaned_data.get("down_topics", "")),
        }


class EdgeConfigForm(ApiForm):
    serializer_class = EdgeConfigCreateSerializer

    up_topics = forms.CharField(
        label="Topics sent up", required=False, widget=forms.Textarea(attrs=TOPICS_ATTRS), help_text="One a line."
    )
    down_topics = forms.CharField(
        label="Topics brought down", required=False, widget=forms.Textarea(attrs=TOPICS_ATTRS), help_text="One a line."
    )
    settings = forms.CharField(
        label="Settings (JSON object)",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={**TOPICS_ATTRS, "rows": 6}),
        help_text='Whatever your software at the edge reads, such as {"sample_rate": 5}; the published document '
        "is at most 64 KiB.",
    )

    def clean_settings(self):
        text = self.cleaned_data.get("settings") or ""
        if not text.strip():
            return {}
        try:
            return json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Not JSON: {exc}.") from None
        except RecursionError:
            raise forms.ValidationError("Not JSON: it nests too deeply.") from None

    def serializer_data(self) -> dict:
        return {
            "up_topics": _lines(self.cleaned_data.get("up_topics", "")),
            "down_topics": _lines(self.cleaned_data.get("down_topics", "")),
            "settings": self.cleaned_data.get("settings", {}),
        }


def _console(request, org_id, project_id, dep_id):
    return premium_console(request, org_id, project_id, dep_id, label="Edge nodes", page="deployment-edge-nodes")


def _node(console, name: str) -> EdgeNode:
    found = EdgeNode.objects.filter(deployment=console.deployment, name=name).first()
    if found is None:
        raise Http404("No such edge node.")
    found.deployment = console.deployment
    return found


@login_required
@require_http_methods(["GET", "POST"])
@once
def node_list(request, org_id, project_id, dep_id):
    """GET: the nodes with their status, the form for a new one and, once, a new node's credentials and bridge file.
    POST: register a node."""
    console = _console(request, org_id, project_id, dep_id)
    form = EdgeNodeForm(_posted(request), prefix="node")
    status = 200
    if request.method == "POST":
        require_write(console)
        status = 400
        if form.is_valid():
            try:
                check_writable(console)
                node, credentials, operation = edge_services.edge_node_create(
                    deployment=console.deployment, actor=console.principal, **form.validated
                )
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                bridge = edge_selectors.edge_bridge(node=node, password=credentials.password)
                shown_once.keep(
                    request.session,
                    SHOWN_SESSION_KEY,
                    {
                        "node": node.name,
                        "username": credentials.username,
                        "password": credentials.password,
                        "bridge_config": edge.render(bridge) if bridge is not None else "",
                        "filename": edge.filename(node.name, node.kind),
                        "operation": operation.public_id,
                    },
                )
                return redirect(_url(console, "deployment-edge-nodes"))
    nodes = list(EdgeNode.objects.filter(deployment=console.deployment).order_by("name", "id"))
    context = {
        "console": console,
        "deployment": console.deployment,
        "nodes": nodes,
        "form": form,
        "can_write": can_write(console),
        "shown": shown_once.take(request.session, SHOWN_SESSION_KEY) if request.method == "GET" else None,
        "tab": "edge-nodes",
    }
    return render(request, "console/edge/nodes.html", context, status=status)


def _node_context(console, node: EdgeNode, form: EdgeConfigForm | None = None) -> dict:
    initial = {"up_topics": "\n".join(node.up_topics), "down_topics": "\n".join(node.down_topics)}
    latest = node.configs.order_by("-version").first()
    if latest is not None:
        initial["settings"] = json.dumps(latest.settings, indent=2, ensure_ascii=False)
    return {
        "console": console,
        "deployment": console.deployment,
        "node": node,
        "topics": {
            "status": edge.status_topic(node.name),
            "config": edge.config_topic(node.name),
            "config_ack": edge.ack_topic(node.name),
            "cloud_prefix": edge.cloud_prefix(node.name),
        },
        "configs": list(node.configs.order_by("-version")[:20]),
        "has_address": edge_selectors.edge_bridge(node=node) is not None,
        "form": form or EdgeConfigForm(initial=initial, prefix="config"),
        "can_write": can_write(console),
        "tab": "edge-nodes",
    }


@login_required
@require_http_methods(["GET", "POST"])
@once
def node_detail(request, org_id, project_id, dep_id, node_name):
    """GET: a node's status, its configuration versions and whether it acknowledged the latest. POST: push a new
    desired configuration (the agent publishes it retained to edge/{node}/config)."""
    console = _console(request, org_id, project_id, dep_id)
    node = _node(console, node_name)
    console.crumb(node.name)
    if request.method == "GET":
        return render(request, "console/edge/node.html", _node_context(console, node))
    require_write(console)
    form = EdgeConfigForm(request.POST, prefix="config")
    status = 400
    if form.is_valid():
        try:
            check_writable(console)
            config = edge_services.edge_config_create(node=node, actor=console.principal, **form.validated)
        except errors.REFUSALS as exc:
            status = errors.to_form(form, exc)
        else:
            messages.success(
                request,
                f"Configuration version {config.version} pushed to {node.name}: it is acknowledged once the node "
                "applies it.",
            )
            return redirect(_url(console, "deployment-edge-node", node.name))
    node.refresh_from_db()
    return render(request, "console/edge/node.html", _node_context(console, node, form), status=status)


@login_required
@require_GET
def node_config(request, org_id, project_id, dep_id, node_name):
    """The node's bridge file, with a placeholder where the password goes (the password was shown once)."""
    console = _console(request, org_id, project_id, dep_id)
    node = _node(console, node_name)
    bridge = edge_selectors.edge_bridge(node=node)
    if bridge is None:
        messages.error(request, "The deployment has no address yet: download the bridge file once it has started.")
        return redirect(_url(console, "deployment-edge-node", node.name))
    response = HttpResponse(edge.render(bridge), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{edge.filename(node.name, node.kind)}"'
    return response


@login_required
@require_http_methods(["GET", "POST"])
@once
def node_delete(request, org_id, project_id, dep_id, node_name):
    """GET: what deleting the node does, and a confirm button. POST: delete it."""
    console = _console(request, org_id, project_id, dep_id)
    require_write(console)
    node = _node(console, node_name)
    if request.method == "POST":
        try:
            check_writable(console)
            operation = edge_services.edge_node_delete(node=node, actor=console.principal)
        except errors.REFUSALS as exc:
            errors.to_page(request, exc)
            return redirect(_url(console, "deployment-edge-node", node.name))
        messages.success(
            request,
            f"Edge node {node_name} deleted: the broker refuses its bridge after operation {operation.public_id}.",
        )
        return redirect(_url(console, "deployment-edge-nodes"))
    console.crumb(node.name, _url(console, "deployment-edge-node", node.name))
    console.crumb("Delete")
    context = {
        "console": console,
        "deployment": console.deployment,
        "node": node,
        "action": _url(console, "deployment-edge-node-delete", node.name),
        "back": _url(console, "deployment-edge-node", node.name),
        "tab": "edge-nodes",
    }
    return render(request, "console/edge/node_delete.html", context)
