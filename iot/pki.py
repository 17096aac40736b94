"""The public end of the devices' PKI: each deployment's device CRL, over plain HTTP and without authentication, at the
URL its device certificates name (CRL Distribution Points), for the brokers that fetch it (EMQX).

A CRL is public by nature (signed by the device CA, listing serial numbers and dates); nothing else of a deployment
or its organization is ever answered here, and an unknown or malformed id is a plain 404.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseNotFound
from django.urls import path, reverse

from iot import certificates
from iot.models import DeviceCertificateAuthority

CRL_CONTENT_TYPE = "application/pkix-crl"  # RFC 5280 4.2.1.13: a DER CRL fetched over HTTP
# What a deployment's public id can be (controlplane.ids): anything else is not looked up at all.
_DEPLOYMENT_ID = re.compile(r"dep_[a-z2-7]{1,28}")


def device_crl_url(deployment_public_id: str) -> str:
    """The absolute URL of the deployment's device CRL, as device certificates name it."""
    return settings.PKI_BASE_URL + reverse("pki-device-crl", kwargs={"dep": deployment_public_id})


def device_crl(request: HttpRequest, dep: str) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    if not _DEPLOYMENT_ID.fullmatch(dep):
        return HttpResponseNotFound(b"", content_type="text/plain")
    crl_pem = (
        DeviceCertificateAuthority.objects.filter(deployment__public_id=dep).values_list("crl_pem", flat=True).first()
    )
    if not crl_pem:
        return HttpResponseNotFound(b"", content_type="text/plain")
    response = HttpResponse(certificates.crl_der(crl_pem), content_type=CRL_CONTENT_TYPE)
    # A CRL changes the moment a device is disabled: no cache in between may keep the old one.
    response["Cache-Control"] = "no-cache"
    return response


urlpatterns = [path("deployments/<str:dep>/devices.crl", device_crl, name="pki-device-crl")]
