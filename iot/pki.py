"""The public end of the devices' PKI: each deployment's device CRL, over plain HTTP and without authentication, at the
URL its device certificates name (CRL Distribution Points), for the brokers that fetch it (EMQX). Two forms of the
same CRL: DER (`devices.crl`, as RFC 5280 gives a CRL over HTTP) and PEM (`devices.crl.pem`, what EMQX 5.x's cache
refresh can read; see device_crl_url).

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
PEM_CONTENT_TYPE = "application/x-pem-file"
# What a deployment's public id can be (controlplane.ids): anything else is not looked up at all.
_DEPLOYMENT_ID = re.compile(r"dep_[a-z2-7]{1,28}")


def device_crl_url(deployment_public_id: str, *, pem: bool = False) -> str:
    """The absolute URL of the deployment's device CRL, as device certificates name it.

    `pem` for certificates an EMQX broker checks: EMQX 5.8.6-5.10.2 takes DER or PEM on a cache miss
    (emqx_ssl_crl_cache.erl http_get/4) but its periodic refresh parses PEM only (emqx_crl_cache.erl parse_crls/1;
    DER from emqx/emqx 194ae14824, 6.0.3). With DER every refresh would empty the node's cache, so every handshake
    would fetch the CRL from the control plane and fail while it cannot be reached. PEM keeps the cache working on
    every release; DER stays served for RFC 5280 relying parties."""
    name = "pki-device-crl-pem" if pem else "pki-device-crl"
    return settings.PKI_BASE_URL + reverse(name, kwargs={"dep": deployment_public_id})


def device_crl(request: HttpRequest, dep: str) -> HttpResponse:
    return _crl_response(request, dep, pem=False)


def device_crl_pem(request: HttpRequest, dep: str) -> HttpResponse:
    return _crl_response(request, dep, pem=True)


def _crl_response(request: HttpRequest, dep: str, *, pem: bool) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    if not _DEPLOYMENT_ID.fullmatch(dep):
        return HttpResponseNotFound(b"", content_type="text/plain")
    crl_pem = (
        DeviceCertificateAuthority.objects.filter(deployment__public_id=dep).values_list("crl_pem", flat=True).first()
    )
    if not crl_pem:
        return HttpResponseNotFound(b"", content_type="text/plain")
    if pem:
        response = HttpResponse(crl_pem.encode("ascii"), content_type=PEM_CONTENT_TYPE)
    else:
        response = HttpResponse(certificates.crl_der(crl_pem), content_type=CRL_CONTENT_TYPE)
    # A CRL changes the moment a device is disabled: no cache in between may keep the old one.
    response["Cache-Control"] = "no-cache"
    return response


urlpatterns = [
    path("deployments/<str:dep>/devices.crl", device_crl, name="pki-device-crl"),
    path("deployments/<str:dep>/devices.crl.pem", device_crl_pem, name="pki-device-crl-pem"),
]
