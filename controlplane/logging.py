"""Adds the request id and operation id of the current context to every log record, and writes records as JSON.

A log line never carries a request's query string: invitation and sign-up links hold their token there.
"""

import logging
from typing import Any

from django.http import HttpRequest
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from controlplane import context


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = context.current()
        record.request_id = ctx.request_id or "-"
        record.operation_id = ctx.operation_id or "-"
        return True


class JsonFormatter(_JsonFormatter):
    """python-json-logger's formatter, with a request in a record's extras (Django logs every 4xx and 5xx answer with
    it) written as its method and path: its repr would add the query string."""

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        for name, value in log_data.items():
            if isinstance(value, HttpRequest):
                log_data[name] = f"{value.method} {value.path}"
        return super().process_log_record(log_data)
