"""Adds the request id and operation id of the current context to every log record."""

import logging

from controlplane import context


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = context.current()
        record.request_id = ctx.request_id or "-"
        record.operation_id = ctx.operation_id or "-"
        return True
