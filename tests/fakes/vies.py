"""HTTP-level fake of the VIES REST API's check-vat-number endpoint, served on 127.0.0.1 in a thread.

Answers like VIES on the calls billing.vies makes: a JSON verdict for known/unknown numbers, with a consultation number
(requestIdentifier) when the request names a requester, INVALID_INPUT for a malformed request, and the member-state
outages (HTTP 200 with actionSucceed=false, or a 5xx). Never a real VIES.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = "/taxation_customs/vies/rest-api/check-vat-number"


class FakeVies:
    """`registered` maps (countryCode, vatNumber) -> (name, address). `outage` is None, an error code
    answered as HTTP 200 actionSucceed=false (e.g. "MS_UNAVAILABLE"), or "HTTP_500"."""

    def __init__(self) -> None:
        self.registered: dict[tuple[str, str], tuple[str, str]] = {}
        self.outage: str | None = None
        self.delay_seconds: float = 0.0
        self.requests: list[dict] = []
        self.consultations: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # A short poll interval keeps shutdown() quick at the end of every test.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{PATH}"

    def register(self, country_code: str, vat_number: str, *, name: str = "---", address: str = "---") -> None:
        self.registered[(country_code, vat_number)] = (name, address)

    def start(self) -> FakeVies:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeVies:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                if self.path != PATH:
                    self._send(404, {"actionSucceed": False, "errorWrappers": [{"error": "NOT_FOUND"}]})
                    return
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                fake.requests.append(body if isinstance(body, dict) else {"raw": raw.decode(errors="replace")})
                if fake.delay_seconds:
                    time.sleep(fake.delay_seconds)
                if fake.outage == "HTTP_500":
                    self._send(500, {"actionSucceed": False, "errorWrappers": [{"error": "SERVICE_UNAVAILABLE"}]})
                    return
                if fake.outage:
                    self._send(200, {"actionSucceed": False, "errorWrappers": [{"error": fake.outage}]})
                    return
                if (
                    not isinstance(body, dict)
                    or not isinstance(body.get("countryCode"), str)
                    or not isinstance(body.get("vatNumber"), str)
                    or not body["vatNumber"]
                ):
                    self._send(
                        400,
                        {
                            "actionSucceed": False,
                            "errorWrappers": [
                                {
                                    "error": "INVALID_INPUT",
                                    "message": "The provided CountryCode is invalid or the VAT number is empty",
                                }
                            ],
                        },
                    )
                    return
                key = (body["countryCode"], body["vatNumber"])
                name, address = fake.registered.get(key, ("---", "---"))
                # VIES gives a consultation number only to a check that says who asks.
                identifier = ""
                if body.get("requesterMemberStateCode") and body.get("requesterNumber"):
                    identifier = f"WAPIAAAA{len(fake.consultations) + 1:08d}"
                    fake.consultations.append(identifier)
                self._send(
                    200,
                    {
                        "countryCode": key[0],
                        "vatNumber": key[1],
                        "requestDate": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                        "valid": key in fake.registered,
                        "requestIdentifier": identifier,
                        "name": name,
                        "address": address,
                        "traderName": "---",
                        "traderStreet": "---",
                        "traderPostalCode": "---",
                        "traderCity": "---",
                        "traderCompanyType": "---",
                        "traderNameMatch": "NOT_PROCESSED",
                        "traderStreetMatch": "NOT_PROCESSED",
                        "traderPostalCodeMatch": "NOT_PROCESSED",
                        "traderCityMatch": "NOT_PROCESSED",
                        "traderCompanyTypeMatch": "NOT_PROCESSED",
                    },
                )

        return Handler
