"""A deployment's monitoring tab: the current values, charts over 1 h to 30 d and their text alternatives, refreshed
every minute while the page is open; and the chart data as JSON for the page's chart module.

Reads only, through console.tenancy (whoever may read the deployment may read its metrics) and console.charts.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from console import charts, tenancy


def refresh_seconds() -> int:
    return int(getattr(settings, "CONSOLE_MONITORING_REFRESH_SECONDS", 60))


@login_required
@require_GET
def monitoring(request, org_id, project_id, dep_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    deployment = console.deployment
    selected = charts.time_range(request.GET.get("range"))
    data = charts.chart_data(deployment=deployment, range_key=selected.key)
    context = {
        "console": console,
        "deployment": deployment,
        "range": selected,
        "ranges": list(charts.RANGES.values()),
        "current": charts.current_values(deployment=deployment),
        "charts": charts.chart_views(data),
        "refresh_seconds": refresh_seconds(),
        "page_url": tenancy.deployment_url(deployment, "deployment-monitoring"),
        "data_url": tenancy.deployment_url(deployment, "deployment-monitoring-data"),
        "tab": "monitoring",
    }
    if request.headers.get("HX-Request"):
        return render(request, "console/deployments/_monitoring_live.html", context)
    return render(request, "console/deployments/monitoring.html", context)


@login_required
@require_GET
def monitoring_data(request, org_id, project_id, dep_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    key = request.GET.get("range") or charts.DEFAULT_RANGE
    if key not in charts.RANGES:
        return JsonResponse({"range": [f"One of {', '.join(charts.RANGES)}."]}, status=400)
    response = JsonResponse(
        charts.chart_data(deployment=console.deployment, range_key=key), json_dumps_params={"separators": (",", ":")}
    )
    response["Cache-Control"] = "no-store"
    return response
