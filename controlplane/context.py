"""Per-request (or per-task) context: request id, operation id, client IP and user agent.

Read by the audit log and the log formatter; set only by the request middleware and by task entry points.
"""

import contextvars
import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class RequestContext:
    request_id: str = ""
    operation_id: str = ""
    ip: str | None = None
    user_agent: str = ""
    via: str = "system"  # api | console | admin | system | task


_current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar("request_context", default=RequestContext())  # noqa: B039 - frozen, never mutated


def current() -> RequestContext:
    return _current.get()


def bind(**changes: Any) -> contextvars.Token[RequestContext]:
    return _current.set(dataclasses.replace(_current.get(), **changes))


def reset(token: contextvars.Token[RequestContext]) -> None:
    _current.reset(token)
