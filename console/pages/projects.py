"""Projects: the organization's project list (with deployment counts), creating, renaming, describing and deleting a
project, and a project's deployment list, which refreshes itself while a deployment is still changing."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from console import errors, selectors, tenancy
from console.forms import ProjectForm, ProjectUpdateForm
from console.once import once
from console.once import posted as _posted
from organizations import access
from projects import services


@login_required
@require_GET
def switch(request):
    """The switchers' target: to another organization, or to a project of the current one."""
    org_id = request.GET.get("org", "")
    principal = access.Principal.from_request(request)
    try:
        organization = access.member_organization(principal, org_id) if org_id else None
    except access.TwoFactorRequired:
        # A member whose session has not met the organization's requirement: its page sends them to their second
        # factor (organizations.middleware) and back.
        return redirect("console:organization", org_id=org_id)
    if organization is None:
        raise Http404("No such organization.")
    project_id = request.GET.get("project")
    if project_id:
        try:
            return redirect("console:project", org_id=organization.public_id, project_id=project_id)
        except NoReverseMatch:  # a value no project URL can hold ("a/b"): no such project
            raise Http404("No such project.") from None
    return redirect("console:organization", org_id=organization.public_id)


@login_required
@require_http_methods(["GET", "POST"])
@once
def organization(request, org_id):
    console = tenancy.for_organization(request, org_id, section="projects")
    can_create = console.can("project:write")
    form = ProjectForm(_posted(request), prefix="new")
    status = 200
    if request.method == "POST":
        console.require("project:write")
        if form.is_valid():
            try:
                project = services.project_create(
                    organization=console.organization, actor=console.principal, **form.validated
                )
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                messages.success(request, f"Project “{project.name}” created.")
                return redirect("console:project", org_id=org_id, project_id=project.public_id)
        else:
            status = 400
    context = {
        "console": console,
        "projects": selectors.projects_with_counts(list(console.projects)),
        "form": form,
        "can_create": can_create,
    }
    return render(request, "console/projects/list.html", context, status=status)


def _deployments_context(console):
    rows = selectors.deployment_rows(project=console.project)
    return {
        "console": console,
        "project": console.project,
        "deployments": rows,
        "settling": any(not row.is_converged for row in rows),
        "can_create": console.can_in_project("deployment:write"),
    }


@login_required
@require_GET
def project(request, org_id, project_id):
    console = tenancy.for_project(request, org_id, project_id)
    console.require_in_project("deployment:read")
    context = _deployments_context(console)
    context["can_manage_project"] = console.can("project:write")
    return render(request, "console/projects/deployments.html", context)


@login_required
@require_GET
def project_rows(request, org_id, project_id):
    """The deployment table alone, for htmx to poll while a row is not settled."""
    console = tenancy.for_project(request, org_id, project_id)
    console.require_in_project("deployment:read")
    return render(request, "console/projects/_deployment_table.html", _deployments_context(console))


@login_required
@require_http_methods(["GET", "POST"])
@once
def project_settings(request, org_id, project_id):
    console = tenancy.for_project(request, org_id, project_id, section="projects")
    console.require("project:write")
    console.crumb("Settings")
    project = console.project
    form = ProjectUpdateForm(_posted(request), initial={"name": project.name, "description": project.description})
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                services.project_update(project=project, actor=console.principal, **form.validated)
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                messages.success(request, "Project saved.")
                return redirect("console:project-settings", org_id=org_id, project_id=project_id)
        else:
            status = 400
    remaining = sum(1 for _ in selectors.deployment_rows(project=project))
    context = {"console": console, "project": project, "form": form, "remaining": remaining}
    return render(request, "console/projects/settings.html", context, status=status)


@login_required
@require_POST
@once
def project_delete(request, org_id, project_id):
    console = tenancy.for_project(request, org_id, project_id, section="projects")
    console.require("project:write")
    name = console.project.name
    try:
        services.project_delete(project=console.project, actor=console.principal)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
        return redirect("console:project-settings", org_id=org_id, project_id=project_id)
    messages.success(request, f"Project “{name}” deleted.")
    return redirect(reverse("console:organization", args=[org_id]))
